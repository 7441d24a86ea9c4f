package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// watchFootprintServices makes meshlet watch the 10 footprint services
// (and web) by resolving their names, as an app would, and waits until it
// knows their instances.
func (l *lab) watchFootprintServices(ctx context.Context) error {
	for _, s := range footprintServices() {
		if _, err := l.resolve(ctx, s+".local"); err != nil {
			rules, _ := l.w.App.Run(ctx, "iptables", "-t", "nat", "-S")
			return fmt.Errorf("resolving %s.local: %w\nrules in the app host:\n%s\nmeshlet's log:\n%s", s, err, rules, meshlab.Tail(l.meshlet.Output()))
		}
	}
	if _, err := l.resolve(ctx, "web.local"); err != nil {
		return fmt.Errorf("resolving web.local: %w", err)
	}
	if err := l.waitEndpoints(ctx, 10, footprintServices()...); err != nil {
		return err
	}
	return l.waitEndpoints(ctx, 3, "web")
}

// maxRSS samples meshlet's RSS every 50 ms for d and returns the largest.
func (l *lab) maxRSS(d time.Duration) int64 {
	var m int64
	for end := time.Now().Add(d); ; {
		m = max(m, procRSS(l.meshletPid()))
		if time.Now().After(end) {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runS6 measures meshlet's resident memory, each run on a fresh process:
// idle with 10 services of 10 instances watched, then under constant load
// over many connections. Goroutines come from the profiling phase.
func runS6(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	rep.S6 = &S6Result{IdleGoroutines: -1, LoadGoroutines: -1}
	for r := range cfg.rounds() {
		if err := l.restartMeshlet(ctx, false); err != nil {
			return err
		}
		if err := l.watchFootprintServices(ctx); err != nil {
			return err
		}
		time.Sleep(cfg.S6Settle)
		idle := l.maxRSS(time.Second)
		exe, anon, other := rssParts(l.meshletPid())
		wait := l.startLoad(ctx, loadRun{url: l.meshletTarget("/payload").url, host: "web.local", rate: cfg.S6Rate, conns: cfg.S6Conns, duration: cfg.S6Duration})
		// The first half warms up connections and buffers; read the rest.
		time.Sleep(cfg.S6Duration / 2)
		loaded := l.maxRSS(cfg.S6Duration / 2)
		res, err := wait()
		if err != nil {
			return err
		}
		l.log("S6 round %d idle %.1f MB, under load %.1f MB (%.0f req/s, %d failed)", r, mb(idle), mb(loaded), res.Rate, res.Failed())
		if res.Failed() > 0 {
			rep.note("S6 round %d: %d requests failed under load: %v", r, res.Failed(), res.ErrorSamples)
		}
		if cfg.measured(r) {
			rep.S6.IdleExe = append(rep.S6.IdleExe, mb(exe))
			rep.S6.IdleAnon = append(rep.S6.IdleAnon, mb(anon))
			rep.S6.IdleOther = append(rep.S6.IdleOther, mb(other))
			rep.S6.IdleRSS = append(rep.S6.IdleRSS, mb(idle))
			rep.S6.LoadRSS = append(rep.S6.LoadRSS, mb(loaded))
		}
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / 1e6 }
