package upstream

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// resetter is an instance that reads each request's head and then resets
// the connection without answering: the request reached it, no response
// byte came back.
func resetter(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var seen atomic.Int64
	addr := tcpServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 4096)
		if n, _ := c.Read(buf); n > 0 {
			seen.Add(1)
		}
		c.SetLinger(0) // RST, not FIN
	})
	return addr, &seen
}

// bodyEcho answers with its name and the request body.
func bodyEcho(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Instance", name)
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, c *http.Client, method, body string) (int, string, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://web.local/", rd)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
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
			good := bodyEcho(t, "good")
			// eject-after 0: the resetting instance stays in. A retry does
			// not take round-robin's turn, so with or without retries every
			// other request meets the resetting instance first.
			_, _, front := webMesh(t, nil,
				withMeta(instance(t, "web", "a-rst", rst), "meshlet-eject-after", "0"),
				withMeta(instance(t, "web", "b-good", addrOf(good)), "meshlet-eject-after", "0"))
			c := client(front)
			for i := range 4 {
				status, body, h := do(t, c, tc.method, "payload")
				if tc.wantRetried {
					if status != http.StatusOK || h.Get("X-Instance") != "good" || (tc.method != http.MethodHead && body != "payload") {
						t.Errorf("request %d: %d %q from %q, want 200 with the whole body from good", i, status, body, h.Get("X-Instance"))
					}
				} else if i%2 == 0 && (status != http.StatusBadGateway || h.Get("X-Meshlet-Error") != ErrCodeFailed) {
					t.Errorf("request %d met the reset: %d %q, want a 502 %s and no retry", i, status, h.Get("X-Meshlet-Error"), ErrCodeFailed)
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
			good := bodyEcho(t, "good")
			meta := []string{"meshlet-eject-after", "0", "meshlet-balance", balance}
			_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a-closes", closer), meta...),
				withMeta(instance(t, "web", "b-good", addrOf(good)), meta...))
			c := client(front)
			const requests = 30
			for i := range requests {
				if status, _, h := do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "good" {
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
	good := bodyEcho(t, "good")
	meta := []string{"meshlet-eject-after", "0", "meshlet-retries", "2"}
	_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a", a), meta...), withMeta(instance(t, "web", "b", b), meta...),
		withMeta(instance(t, "web", "c", c), meta...), withMeta(instance(t, "web", "d", addrOf(good)), meta...))
	status, body, h := do(t, client(front), http.MethodGet, "")
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
	good := bodyEcho(t, "good")
	meta := []string{"meshlet-eject-after", "0", "meshlet-retry-budget", "0", "meshlet-retry-min", "0"}
	_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a", rst), meta...), withMeta(instance(t, "web", "b", addrOf(good)), meta...))
	c := client(front)
	ok, failed := 0, 0
	// Every other request meets the resetting instance first (a retry
	// does not take round-robin's turn); the bucket holds budgetBurst
	// retries.
	for range 2 * (budgetBurst + 5) {
		status, body, _ := do(t, c, http.MethodGet, "")
		switch {
		case status == http.StatusOK:
			ok++
		case strings.Contains(body, "retry budget exhausted"):
			failed++
		default:
			t.Fatalf("unexpected answer %d %q", status, body)
		}
	}
	if failed != 5 || ok != 2*budgetBurst+5 {
		t.Errorf("%d ok, %d refused for want of budget; want %d and 5", ok, failed, 2*budgetBurst+5)
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
	fast := bodyEcho(t, "fast")

	// Try timeout: the GET leaves the slow instance for the fast one.
	meta := []string{"meshlet-try-timeout", "200ms", "meshlet-eject-after", "0"}
	_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a", addrOf(slow)), meta...), withMeta(instance(t, "web", "b", addrOf(fast)), meta...))
	start := time.Now()
	status, _, h := do(t, client(front), http.MethodGet, "")
	if status != http.StatusOK || h.Get("X-Instance") != "fast" || time.Since(start) > time.Second {
		t.Errorf("GET with a try timeout: %d from %q after %v; want 200 from fast after about 200ms", status, h.Get("X-Instance"), time.Since(start))
	}
	// ... but a POST is not sent twice.
	status, _, h = do(t, client(front), http.MethodPost, "x")
	if status == http.StatusOK {
		status, _, h = do(t, client(front), http.MethodPost, "x") // round-robin: make sure one meets slow
	}
	if status != http.StatusGatewayTimeout || h.Get("X-Meshlet-Error") != ErrCodeTimeout {
		t.Errorf("POST to the slow instance: %d %q, want 504 %s", status, h.Get("X-Meshlet-Error"), ErrCodeTimeout)
	}

	// Overall timeout: one instance, all of the request's time.
	_, _, front = webMesh(t, nil, withMeta(instance(t, "web", "a", addrOf(slow)), "meshlet-timeout", "300ms"))
	start = time.Now()
	status, body, h := do(t, client(front), http.MethodGet, "")
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
	good := bodyEcho(t, "good")
	meta := []string{"meshlet-eject-5xx", "true", "meshlet-eject-after", "2", "meshlet-eject-time", "300ms"}
	_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a", addrOf(flaky)), meta...), withMeta(instance(t, "web", "b", addrOf(good)), meta...))
	c := client(front)
	counts := map[string]int{}
	for range 20 {
		_, _, h := do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["flaky"] != 2 {
		t.Errorf("requests per instance = %v; want flaky to get 2 (its failures) and then none", counts)
	}
	broken.Store(false)
	time.Sleep(350 * time.Millisecond)
	counts = map[string]int{}
	for range 10 {
		_, _, h := do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["flaky"] != 5 {
		t.Errorf("after the ejection time: %v; want flaky back in turn", counts)
	}
}

func TestConnectFailuresEjectWithoutFailingRequests(t *testing.T) {
	good := bodyEcho(t, "good")
	other := bodyEcho(t, "other")
	_, _, front := webMesh(t, nil, instance(t, "web", "a", deadAddr(t)), instance(t, "web", "b", addrOf(good)), instance(t, "web", "c", addrOf(other)))
	c := client(front)
	for i := range 30 {
		if status, _, _ := do(t, c, http.MethodPost, "x"); status != http.StatusOK {
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
	_, _, front := webMesh(t, nil, withMeta(instance(t, "web", "a", addrOf(slow)), meta...),
		withMeta(instance(t, "web", "b", addrOf(f1)), meta...), withMeta(instance(t, "web", "c", addrOf(f2)), meta...))
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(front)
			for range 40 {
				if status, _, _ := do(t, c, http.MethodGet, ""); status != http.StatusOK {
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
	a := whoAmI(t, "a")
	crit := func(meta ...string) *api.ServiceEntry {
		return withMeta(withStatus(instance(t, "web", "a", addrOf(a)), api.HealthCritical), meta...)
	}
	_, _, front := webMesh(t, nil, crit())
	start := time.Now()
	status, body, h := do(t, client(front), http.MethodGet, "")
	if status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != ErrCodeNoInstance ||
		!strings.Contains(body, "all 1 registered instances fail their checks") || time.Since(start) > time.Second {
		t.Errorf("all critical: %d %q %q after %v, want a fast 503 with the reason", status, h.Get("X-Meshlet-Error"), body, time.Since(start))
	}
	_, _, front = webMesh(t, nil, crit("meshlet-panic", "true"))
	if status, _, h := do(t, client(front), http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("all critical in panic mode: %d from %q, want 200 from a", status, h.Get("X-Instance"))
	}
	// Warning is not passing.
	_, _, front = webMesh(t, nil, withStatus(instance(t, "web", "a", addrOf(a)), api.HealthWarning))
	if status, _, _ := do(t, client(front), http.MethodGet, ""); status != http.StatusServiceUnavailable {
		t.Errorf("warning only: %d, want 503", status)
	}
}

func TestConsulWeightsShareTheLoad(t *testing.T) {
	heavy, light := whoAmI(t, "heavy"), whoAmI(t, "light")
	eh, el := instance(t, "web", "a", addrOf(heavy)), instance(t, "web", "b", addrOf(light))
	eh.Service.Weights = api.AgentWeights{Passing: 3, Warning: 1}
	el.Service.Weights = api.AgentWeights{Passing: 1, Warning: 1}
	_, _, front := webMesh(t, nil, eh, el)
	counts := map[string]int{}
	for range 40 {
		_, _, h := do(t, client(front), http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["heavy"] != 30 || counts["light"] != 10 {
		t.Errorf("requests = %v, want 30 and 10 for weights 3 and 1", counts)
	}
}
