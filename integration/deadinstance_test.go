package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// A killed container's address black-holes: its processes' sockets close
// (meshlet's pooled connections see the FIN), and then nothing answers a
// SYN. Here the victim's namespace drops incoming TCP before its process
// is killed, which is the same thing as seen from meshlet. Only the
// requests sent to the victim before its first connect had been pending
// for a moment may wait for the connect timeout; every later one goes
// elsewhere at once, and none fails. With a per-try timeout, the wait is
// that timeout instead.
func TestBlackHoledInstanceStallsOnlyTheFirstConnects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		maxWait time.Duration // what the connect may cost a request
	}{
		{"connect timeout 2s (default)", nil, 2 * time.Second},
		{"per-try timeout 500ms", []string{"--policy", "web:try-timeout=500ms"}, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := startWorld(t, meshlab.Options{Meshlet: tc.args})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			vip := resolveVIP(t, w, "web.local")
			c := w.NewAppClient(vip, "web.local", false)
			waitEndpoints(t, w, 3)
			victim := w.Instances[2]

			const n, every = 50, 100 * time.Millisecond // 10/s for 5 s
			done := make(chan []meshlab.Hit, 1)
			starts := make([]time.Time, n)
			go func() {
				start := time.Now()
				for i := range starts {
					starts[i] = start.Add(time.Duration(i) * every)
				}
				done <- c.ConstantRate(ctx, "/", n, every)
			}()
			time.Sleep(time.Second)
			if out, err := victim.Host.Run(ctx, "iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"); err != nil {
				t.Fatalf("black-holing %s: %v %s", victim.Name, err, out)
			}
			victim.Proc.Kill()
			killed := time.Now()
			hits := <-done

			if failed := meshlab.Failed(hits); len(failed) > 0 {
				t.Errorf("%d requests failed, want none; first: %+v", len(failed), failed[0])
			}
			var slow []string
			var longest time.Duration
			for i, h := range hits {
				took := h.At.Sub(starts[i])
				longest = max(longest, took)
				if took < tc.maxWait*3/4 {
					continue
				}
				slow = append(slow, fmt.Sprintf("#%d started %v after the kill took %v", i, starts[i].Sub(killed).Round(time.Millisecond), took.Round(time.Millisecond)))
				// The victim's next turn comes within 300 ms of the kill;
				// once its connect has been pending for 200 ms, new
				// requests go elsewhere. A second of slack for a loaded
				// machine; the old code stalled requests until five
				// connects had timed out.
				if starts[i].After(killed.Add(time.Second)) {
					t.Errorf("request %d started %v after the kill and waited %v", i, starts[i].Sub(killed), took)
				}
				if took > tc.maxWait+time.Second {
					t.Errorf("request %d waited %v, more than the %v connect allows", i, took, tc.maxWait)
				}
			}
			if len(slow) > 2 {
				t.Errorf("%d requests waited on the dead instance, want at most 2: %v", len(slow), slow)
			}
			out := w.Meshlet.Output()
			t.Logf("%d GETs at 10/s, %s black-holed and killed after 1 s: %v; longest request %v; slow: %v",
				len(hits), victim.Name, meshlab.CountBy(hits), longest.Round(time.Millisecond), slow)
			for _, line := range []string{"ejecting instance: connect timed out", "retrying on another instance"} {
				if !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
					return strings.Contains(l, line) && strings.Contains(l, "service=web") && strings.Contains(l, victim.Host.IP.String())
				}) {
					t.Errorf("meshlet logged no %q line naming the service and %s", line, victim.Host.IP)
				}
			}
		})
	}
}
