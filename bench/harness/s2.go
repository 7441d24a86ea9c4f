package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/meshlet/meshlet/bench/loadgen"
)

// loadRun is one run of our constant-rate client from the app host.
type loadRun struct {
	url      string
	host     string // Host header
	rate     float64
	conns    int
	duration time.Duration
	count    string // header to count answers by
}

// startLoad starts the client on the load core; wait collects its result.
func (l *lab) startLoad(ctx context.Context, r loadRun) (wait func() (loadgen.HTTPResult, error)) {
	done := make(chan struct{})
	var (
		res loadgen.HTTPResult
		err error
	)
	go func() {
		defer close(done)
		argv := pinned(l.loadCPU, l.loadgen, "http", "-url", r.url,
			"-rate", strconv.FormatFloat(r.rate, 'f', -1, 64), "-conns", strconv.Itoa(r.conns),
			"-duration", r.duration.String(), "-timeout", "2s")
		if r.host != "" {
			argv = append(argv, "-host", r.host)
		}
		if r.count != "" {
			argv = append(argv, "-count-header", r.count)
		}
		var out string
		out, err = runIn(ctx, l.w.App, r.duration+30*time.Second, argv...)
		if err == nil {
			err = json.Unmarshal([]byte(out), &res)
		}
	}()
	return func() (loadgen.HTTPResult, error) {
		<-done
		return res, err
	}
}

func (l *lab) load(ctx context.Context, r loadRun) (loadgen.HTTPResult, error) {
	return l.startLoad(ctx, r)()
}

// runS2 measures latency at constant rates.
func runS2(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	targets := l.httpTargets("/payload")
	for _, rate := range cfg.S2Rates {
		for _, t := range targets {
			rep.S2 = append(rep.S2, S2Row{Rate: rate, Target: t.name})
		}
	}
	for r := range cfg.rounds() {
		for _, rate := range cfg.S2Rates {
			for _, t := range targets {
				if t.bin != "" {
					if err := l.useMeshlet(ctx, t.bin); err != nil {
						return fmt.Errorf("%s: %w", t.name, err)
					}
				}
				res, err := l.load(ctx, loadRun{url: t.url, host: t.host, rate: rate, conns: cfg.S2Conns, duration: cfg.S2Duration})
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				l.log("S2 round %d %5.0f/s %-8s p50 %6.0f p99 %6.0f p99.9 %6.0f max %7.0f µs  failed %d %v",
					r, rate, t.name, res.P50us, res.P99us, res.P999us, res.MaxUs, res.Failed(), res.ErrorSamples)
				if !cfg.measured(r) {
					continue
				}
				row := rep.s2(rate, t.name)
				row.P50 = append(row.P50, res.P50us)
				row.P99 = append(row.P99, res.P99us)
				row.P999 = append(row.P999, res.P999us)
				row.Max = append(row.Max, res.MaxUs)
				row.Achieved = append(row.Achieved, res.Rate)
				row.Failed += res.Failed()
			}
		}
	}
	return nil
}
