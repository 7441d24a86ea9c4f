package outbound

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// resetter is an instance that reads each request's head and then resets
// the connection without answering: the request reached it, no response
// byte came back.
func resetter(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var seen atomic.Int64
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 4096)
		if n, _ := c.Read(buf); n > 0 {
			seen.Add(1)
		}
		c.SetLinger(0) // RST, not FIN
	})
	return addr, &seen
}

func TestRetryOnlyWhenSafe(t *testing.T) {
	for _, tc := range []struct {
		method      string
		wantRetried bool
	}{
		{http.MethodGet, true}, {http.MethodHead, true}, {http.MethodOptions, true},
		{http.MethodPut, true}, {http.MethodDelete, true},
		{http.MethodPost, false}, {http.MethodPatch, false},
	} {
		t.Run(tc.method, func(t *testing.T) {
			rst, seen := resetter(t)
			good := upstreamtest.BodyEcho(t, "good")
			// eject-after 0: the resetting instance stays in. A retry does
			// not take round-robin's turn, so with or without retries every
			// other request meets the resetting instance first.
			_, _, front := webMesh(t, nil,
				upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a-rst", rst), "meshlet-eject-after", "0"),
				upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b-good", upstreamtest.AddrOf(good)), "meshlet-eject-after", "0"))
			c := upstreamtest.Client(front)
			for i := range 4 {
				status, body, h := upstreamtest.Do(t, c, tc.method, "payload")
				if tc.wantRetried {
					if status != http.StatusOK || h.Get("X-Instance") != "good" || (tc.method != http.MethodHead && body != "payload") {
						t.Errorf("request %d: %d %q from %q, want 200 with the whole body from good", i, status, body, h.Get("X-Instance"))
					}
				} else if i%2 == 0 && (status != http.StatusBadGateway || h.Get("X-Meshlet-Error") != upstream.ErrCodeFailed) {
					t.Errorf("request %d met the reset: %d %q, want a 502 %s and no retry", i, status, h.Get("X-Meshlet-Error"), upstream.ErrCodeFailed)
				}
			}
			if got, want := seen.Load(), int64(2); got != want {
				t.Errorf("the resetting instance saw %d requests, want %d (never one twice)", got, want)
			}
		})
	}
}

// TestRetryDoesNotTakeAFreshRequestsTurn is the regression test of 29
// of 30 fresh GETs meeting the failing one of two instances first: the
// retry's pick moved the counter that fresh requests use.
func TestRetryDoesNotTakeAFreshRequestsTurn(t *testing.T) {
	for _, balance := range []string{"round-robin", "least-request"} {
		t.Run(balance, func(t *testing.T) {
			closer, seen := resetter(t)
			good := upstreamtest.BodyEcho(t, "good")
			meta := []string{"meshlet-eject-after", "0", "meshlet-balance", balance}
			_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a-closes", closer), meta...),
				upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b-good", upstreamtest.AddrOf(good)), meta...))
			c := upstreamtest.Client(front)
			const requests = 30
			for i := range requests {
				if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "good" {
					t.Fatalf("request %d: %d from %q, want 200 from good", i, status, h.Get("X-Instance"))
				}
			}
			got := seen.Load()
			switch balance {
			case "round-robin": // strictly every other fresh request
				if got != requests/2 {
					t.Errorf("the failing instance was tried first by %d of %d fresh requests, want %d", got, requests, requests/2)
				}
			case "least-request": // two random choices, both idle: a coin toss each
				if got < 5 || got > 25 {
					t.Errorf("the failing instance was tried first by %d of %d fresh requests, want about half", got, requests)
				}
			}
		})
	}
}

func TestRetryPicksAnUntriedInstanceAndStopsAtTheLimit(t *testing.T) {
	a, seenA := resetter(t)
	b, seenB := resetter(t)
	c, seenC := resetter(t)
	good := upstreamtest.BodyEcho(t, "good")
	meta := []string{"meshlet-eject-after", "0", "meshlet-retries", "2"}
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", a), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", b), meta...),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "c", c), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "d", upstreamtest.AddrOf(good)), meta...))
	status, body, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	// Round-robin starts at a: a, b, c failed, and 2 retries are all there is.
	if status != http.StatusBadGateway || !strings.Contains(body, "(3 tries)") {
		t.Errorf("got %d %q %q, want 502 after 3 tries", status, body, h.Get("X-Meshlet-Error"))
	}
	if seenA.Load() != 1 || seenB.Load() != 1 || seenC.Load() != 1 {
		t.Errorf("tries per instance: a %d, b %d, c %d; want one each", seenA.Load(), seenB.Load(), seenC.Load())
	}
}

func TestRetryBudgetStopsRetries(t *testing.T) {
	rst, _ := resetter(t)
	good := upstreamtest.BodyEcho(t, "good")
	meta := []string{"meshlet-eject-after", "0", "meshlet-retry-budget", "0", "meshlet-retry-min", "0"}
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", rst), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(good)), meta...))
	c := upstreamtest.Client(front)
	ok, failed := 0, 0
	// Every other request meets the resetting instance first (a retry
	// does not take round-robin's turn); the bucket holds upstream.RetryBudgetBurst
	// retries.
	for range 2 * (upstream.RetryBudgetBurst + 5) {
		status, body, _ := upstreamtest.Do(t, c, http.MethodGet, "")
		switch {
		case status == http.StatusOK:
			ok++
		case strings.Contains(body, "retry budget exhausted"):
			failed++
		default:
			t.Fatalf("unexpected answer %d %q", status, body)
		}
	}
	if failed != 5 || ok != 2*upstream.RetryBudgetBurst+5 {
		t.Errorf("%d ok, %d refused for want of budget; want %d and 5", ok, failed, 2*upstream.RetryBudgetBurst+5)
	}
}

func TestTimeouts(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		w.Header().Set("X-Instance", "slow")
	}))
	t.Cleanup(slow.Close)
	fast := upstreamtest.BodyEcho(t, "fast")

	// Try timeout: the GET leaves the slow instance for the fast one.
	meta := []string{"meshlet-try-timeout", "200ms", "meshlet-eject-after", "0"}
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(slow)), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(fast)), meta...))
	start := time.Now()
	status, _, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	if status != http.StatusOK || h.Get("X-Instance") != "fast" || time.Since(start) > time.Second {
		t.Errorf("GET with a try timeout: %d from %q after %v; want 200 from fast after about 200ms", status, h.Get("X-Instance"), time.Since(start))
	}
	// ... but a POST is not sent twice.
	status, _, h = upstreamtest.Do(t, upstreamtest.Client(front), http.MethodPost, "x")
	if status == http.StatusOK {
		status, _, h = upstreamtest.Do(t, upstreamtest.Client(front), http.MethodPost, "x") // round-robin: make sure one meets slow
	}
	if status != http.StatusGatewayTimeout || h.Get("X-Meshlet-Error") != upstream.ErrCodeTimeout {
		t.Errorf("POST to the slow instance: %d %q, want 504 %s", status, h.Get("X-Meshlet-Error"), upstream.ErrCodeTimeout)
	}

	// Overall timeout: one instance, all of the request's time.
	_, _, front = webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(slow)), "meshlet-timeout", "300ms"))
	start = time.Now()
	status, body, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	if status != http.StatusGatewayTimeout || !strings.Contains(body, "timeout of 300ms") || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("overall timeout: %d %q after %v", status, body, time.Since(start))
	}
}

func TestPassiveHealthEjectsAndBringsBack(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", "flaky")
		if broken.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(flaky.Close)
	good := upstreamtest.BodyEcho(t, "good")
	meta := []string{"meshlet-eject-5xx", "true", "meshlet-eject-after", "2", "meshlet-eject-time", "300ms"}
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(flaky)), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(good)), meta...))
	c := upstreamtest.Client(front)
	counts := map[string]int{}
	for range 20 {
		_, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["flaky"] != 2 {
		t.Errorf("requests per instance = %v; want flaky to get 2 (its failures) and then none", counts)
	}
	broken.Store(false)
	time.Sleep(350 * time.Millisecond)
	counts = map[string]int{}
	for range 10 {
		_, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["flaky"] != 5 {
		t.Errorf("after the ejection time: %v; want flaky back in turn", counts)
	}
}

func TestConnectFailuresEjectWithoutFailingRequests(t *testing.T) {
	good := upstreamtest.BodyEcho(t, "good")
	other := upstreamtest.BodyEcho(t, "other")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(good)), upstreamtest.Instance(t, "web", "c", upstreamtest.AddrOf(other)))
	c := upstreamtest.Client(front)
	for i := range 30 {
		if status, _, _ := upstreamtest.Do(t, c, http.MethodPost, "x"); status != http.StatusOK {
			t.Fatalf("request %d: %d; a dial failure is retried for any method", i, status)
		}
	}
}

func TestLeastRequestSendsLessToASlowInstance(t *testing.T) {
	var mu sync.Mutex
	counts := map[string]int{}
	handler := func(name string, delay time.Duration) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay)
			mu.Lock()
			counts[name]++
			mu.Unlock()
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	slow, f1, f2 := handler("slow", 100*time.Millisecond), handler("f1", time.Millisecond), handler("f2", time.Millisecond)
	meta := []string{"meshlet-balance", "least-request"}
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(slow)), meta...),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(f1)), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "c", upstreamtest.AddrOf(f2)), meta...))
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := upstreamtest.Client(front)
			for range 40 {
				if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
					t.Errorf("status %d", status)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("requests per instance: %v", counts)
	if counts["slow"]*5 > counts["f1"] || counts["slow"]*5 > counts["f2"] {
		t.Errorf("requests = %v; want the slow instance to get a fifth or less of a fast one's", counts)
	}
}

func TestAllCriticalIsA503UnlessPanic(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	crit := func(meta ...string) *api.ServiceEntry {
		return upstreamtest.WithMeta(upstreamtest.WithStatus(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), api.HealthCritical), meta...)
	}
	_, _, front := webMesh(t, nil, crit())
	start := time.Now()
	status, body, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	if status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != upstream.ErrCodeNoInstance ||
		!strings.Contains(body, "all 1 registered instances fail their checks") || time.Since(start) > time.Second {
		t.Errorf("all critical: %d %q %q after %v, want a fast 503 with the reason", status, h.Get("X-Meshlet-Error"), body, time.Since(start))
	}
	_, _, front = webMesh(t, nil, crit("meshlet-panic", "true"))
	if status, _, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("all critical in panic mode: %d from %q, want 200 from a", status, h.Get("X-Instance"))
	}
	// Warning is not passing.
	_, _, front = webMesh(t, nil, upstreamtest.WithStatus(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), api.HealthWarning))
	if status, _, _ := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, ""); status != http.StatusServiceUnavailable {
		t.Errorf("warning only: %d, want 503", status)
	}
}

func TestConsulWeightsShareTheLoad(t *testing.T) {
	heavy, light := upstreamtest.WhoAmI(t, "heavy"), upstreamtest.WhoAmI(t, "light")
	eh, el := upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(heavy)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(light))
	eh.Service.Weights = api.AgentWeights{Passing: 3, Warning: 1}
	el.Service.Weights = api.AgentWeights{Passing: 1, Warning: 1}
	_, _, front := webMesh(t, nil, eh, el)
	counts := map[string]int{}
	for range 40 {
		_, _, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["heavy"] != 30 || counts["light"] != 10 {
		t.Errorf("requests = %v, want 30 and 10 for weights 3 and 1", counts)
	}
}
