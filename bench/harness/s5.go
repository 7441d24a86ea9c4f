package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// indexWatch follows Consul's passing instances of a service with blocking
// queries, as meshlet does, and notes when an instance leaves the list.
type indexWatch struct {
	mu      sync.Mutex
	gone    map[string]time.Time // instance ID → when the harness saw it leave
	cancel  context.CancelFunc
	done    chan struct{}
	lastErr error
}

func watchPassing(ctx context.Context, c *api.Client, service string) *indexWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &indexWatch{gone: map[string]time.Time{}, cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(w.done)
		var index uint64
		var prev []string
		first := true
		for ctx.Err() == nil {
			q := (&api.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx)
			entries, meta, err := c.Health().Service(service, "", true, q)
			if err != nil {
				w.mu.Lock()
				w.lastErr = err
				w.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			now := time.Now()
			var ids []string
			for _, e := range entries {
				ids = append(ids, e.Service.ID)
			}
			w.mu.Lock()
			for _, id := range prev {
				if !slices.Contains(ids, id) {
					if _, seen := w.gone[id]; !seen {
						w.gone[id] = now
					}
				}
			}
			w.mu.Unlock()
			prev, index = ids, meta.LastIndex
			if first {
				first = false
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
	}
	return w
}

// goneAt stops the watch and returns when id left the passing list.
func (w *indexWatch) goneAt(id string) (time.Time, error) {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.gone[id]
	if !ok {
		return time.Time{}, fmt.Errorf("consul never dropped %s from the passing instances (last error: %v)", id, w.lastErr)
	}
	return t, nil
}

// runS5 turns one instance's check critical, then kills another, each
// under constant load through meshlet, and measures failed requests and
// how long after Consul's index changed the instance still got requests
// (for the killed one: connection attempts, which its namespace still
// receives). It restores both after each run.
func runS5(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	rep.S5 = []S5Row{{Event: "check turned critical"}, {Event: "instance killed"}}
	for r := range cfg.rounds() {
		for i := range rep.S5 {
			row := &rep.S5[i]
			victim := l.w.Instances[1+i] // web-2 goes critical, web-3 is killed
			failed, after, detect, back, err := l.failover(ctx, victim, i == 1)
			if errors.Is(err, errNoTraffic) {
				rep.note("S5 round %d, %s: %v; the run is left out", r, row.Event, err)
				continue
			}
			if err != nil {
				return fmt.Errorf("%s: %w", row.Event, err)
			}
			l.log("S5 round %d %-22s failed %d, last request %+.1f ms after the index change, detected %.0f ms after the event, back in rotation %v after passing again",
				r, row.Event, failed, after, detect, back.Round(10*time.Millisecond))
			if cfg.measured(r) {
				row.BackS = append(row.BackS, back.Seconds())
				row.Failed = append(row.Failed, failed)
				row.AfterIndexMs = append(row.AfterIndexMs, after)
				row.DetectMs = append(row.DetectMs, detect)
			}
		}
	}
	return nil
}

// waitServing waits until requests through meshlet reach inst again: a
// restarted instance is passing in Consul at once, but meshlet's passive
// health may keep it ejected for a while after its failures. It returns
// how long that took.
func (l *lab) waitServing(ctx context.Context, inst *meshlab.Instance) (time.Duration, error) {
	start := time.Now()
	client := l.w.App.HTTPClient(2 * time.Second)
	err := meshlab.Poll(ctx, 3*time.Minute, "requests through meshlet to reach "+inst.Name, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.meshletTarget("/payload").url, nil)
		if err != nil {
			return meshlab.StopPolling(err)
		}
		req.Host = "web.local"
		for range 6 {
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Header.Get("X-Instance") == inst.Name {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
		return fmt.Errorf("not yet")
	})
	return time.Since(start), err
}

// errNoTraffic marks a run whose victim got no request while watched.
var errNoTraffic = errors.New("no request reached the instance while watched")

func (l *lab) failover(ctx context.Context, victim *meshlab.Instance, kill bool) (failed int, afterMs, detectMs float64, back time.Duration, err error) {
	cfg := l.cfg
	if err := l.waitEndpoints(ctx, 3, "web"); err != nil {
		return 0, 0, 0, 0, err
	}
	if _, err := l.waitServing(ctx, victim); err != nil {
		return 0, 0, 0, 0, err
	}
	watch := watchPassing(ctx, l.w.Consul, "web")
	defer watch.cancel()
	wait := l.startLoad(ctx, loadRun{url: l.meshletTarget("/payload").url, host: "web.local", rate: cfg.S5Rate, conns: 16, duration: cfg.S5Duration, count: "X-Instance"})
	time.Sleep(cfg.S5Duration / 5)
	tw, err := watchTCP(victim.Host, l.w.App.IP, 8080)
	if err != nil {
		wait()
		return 0, 0, 0, 0, err
	}
	event := time.Now()
	if kill {
		victim.Proc.Kill()
	} else {
		resp, err := l.w.ConsulHost.HTTPClient(5*time.Second).Post(victim.URL("/admin/health?state=fail"), "text/plain", nil)
		if err != nil {
			tw.Close()
			wait()
			return 0, 0, 0, 0, err
		}
		resp.Body.Close()
	}
	res, loadErr := wait()
	last, seen := tw.Close()
	gone, goneErr := watch.goneAt(victim.Name)

	// Put things back for the next run whatever happened.
	if kill {
		p, err := victim.Host.Start("webinstance", nil, pinned(l.serverCPU, l.bins.WebInstance, "-listen", ":8080", "-name", victim.Name)...)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		victim.Proc = p
	} else {
		resp, err := l.w.ConsulHost.HTTPClient(5*time.Second).Post(victim.URL("/admin/health?state=ok"), "text/plain", nil)
		if err != nil {
			return 0, 0, 0, 0, err
		}
		resp.Body.Close()
	}
	if err := l.w.WaitPassing(ctx, "web", 3); err != nil {
		return 0, 0, 0, 0, err
	}
	if err := l.waitEndpoints(ctx, 3, "web"); err != nil {
		return 0, 0, 0, 0, err
	}
	// Consul passes it again: how long until meshlet sends it requests?
	if back, err = l.waitServing(ctx, victim); err != nil {
		return 0, 0, 0, 0, err
	}

	if loadErr != nil {
		return 0, 0, 0, 0, loadErr
	}
	if goneErr != nil {
		return 0, 0, 0, 0, fmt.Errorf("%w (load: %+v)", goneErr, res)
	}
	if seen == 0 || last.IsZero() {
		return res.Failed(), 0, 0, back, fmt.Errorf("%s: %w (answers by instance: %v)", victim.Name, errNoTraffic, res.ByHeader)
	}
	if res.Failed() > 0 {
		l.log("S5 %s: %d requests failed: %v", victim.Name, res.Failed(), res.ErrorSamples)
	}
	return res.Failed(), float64(last.Sub(gone)) / float64(time.Millisecond), float64(gone.Sub(event)) / float64(time.Millisecond), back, nil
}
