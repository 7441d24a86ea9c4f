package upstream

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	catalogPath = "/v1/catalog/services"
	leaderPath  = "/v1/status/leader" // the liveness check
)

func healthPath(service string) string { return "/v1/health/service/" + service }

// fakeConsul speaks the Consul endpoints the package uses, including
// blocking on ?index= until the test changes the answer.
type fakeConsul struct {
	srv *httptest.Server

	mu       sync.Mutex
	hung     bool // answer nothing at all, as a stopped Consul process
	answers  map[string]*fakeAnswer
	changed  chan struct{} // closed and replaced on every change
	requests map[string][]string
}

type fakeAnswer struct {
	index uint64
	body  any
	fail  bool
	hold  bool // answer nothing until this changes, as a slow Consul
}

func newFakeConsul(t testing.TB) *fakeConsul {
	t.Helper()
	fc := &fakeConsul{
		answers:  make(map[string]*fakeAnswer),
		changed:  make(chan struct{}),
		requests: make(map[string][]string),
	}
	fc.answers[leaderPath] = &fakeAnswer{index: 1, body: "127.0.0.1:8300"}
	fc.srv = httptest.NewServer(http.HandlerFunc(fc.serve))
	t.Cleanup(func() {
		fc.setHung(false) // release held requests, or Close waits for them
		fc.srv.Close()
	})
	return fc
}

func (fc *fakeConsul) client(t testing.TB) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: fc.srv.Listener.Addr().String(), Scheme: "http"})
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}

func (fc *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	var wait time.Duration = time.Minute
	if s := r.URL.Query().Get("wait"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			wait = d
		}
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	indexParam := r.URL.Query().Get("index")
	fc.mu.Lock()
	fc.requests[r.URL.Path] = append(fc.requests[r.URL.Path], indexParam)
	for {
		if fc.hung {
			changed := fc.changed
			fc.mu.Unlock()
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			}
			fc.mu.Lock()
			continue
		}
		a := fc.answers[r.URL.Path]
		if a == nil {
			fc.mu.Unlock()
			http.Error(w, "fake consul: no answer set for "+r.URL.Path, http.StatusNotFound)
			return
		}
		if a.fail {
			fc.mu.Unlock()
			http.Error(w, "fake consul: failing on purpose", http.StatusInternalServerError)
			return
		}
		if !a.hold && (indexParam == "" || indexParam != strconv.FormatUint(a.index, 10)) {
			body, _ := json.Marshal(a.body)
			fc.mu.Unlock()
			w.Header().Set("X-Consul-Index", strconv.FormatUint(a.index, 10))
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
			return
		}
		changed := fc.changed
		fc.mu.Unlock()
		select {
		case <-changed:
		case <-timeout.C:
			indexParam = "" // answer the unchanged state, as Consul does
		case <-r.Context().Done():
			return
		}
		fc.mu.Lock()
	}
}

func (fc *fakeConsul) set(path string, a fakeAnswer) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.answers[path] = &a
	close(fc.changed)
	fc.changed = make(chan struct{})
}

func (fc *fakeConsul) setCatalog(index uint64, names ...string) {
	services := map[string][]string{}
	for _, n := range names {
		services[n] = []string{}
	}
	fc.set(catalogPath, fakeAnswer{index: index, body: services})
}

func (fc *fakeConsul) setHealth(service string, index uint64, entries ...*api.ServiceEntry) {
	if entries == nil {
		entries = []*api.ServiceEntry{}
	}
	fc.set(healthPath(service), fakeAnswer{index: index, body: entries})
}

func (fc *fakeConsul) setFailing(path string, fail bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	a := fc.answers[path]
	if a == nil {
		a = &fakeAnswer{}
		fc.answers[path] = a
	}
	a.fail = fail
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// setHolding makes queries of path wait, without an answer, until it is
// released (or their wait passes).
func (fc *fakeConsul) setHolding(path string, hold bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	a := fc.answers[path]
	if a == nil {
		a = &fakeAnswer{body: map[string][]string{}}
		fc.answers[path] = a
	}
	a.hold = hold
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// setHung makes every request wait, without an answer and without end,
// until it is released: a Consul whose process is stopped (SIGSTOP), or
// whose container is paused.
func (fc *fakeConsul) setHung(hung bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.hung = hung
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// indexesSent returns the ?index= of every request to path so far ("" for none).
func (fc *fakeConsul) indexesSent(path string) []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]string(nil), fc.requests[path]...)
}

// instance is a passing instance of service at addr ("host:port").
func instance(t testing.TB, service, id, addr string) *api.ServiceEntry {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("instance address %q: %v", addr, err)
	}
	p, _ := strconv.Atoi(port)
	return &api.ServiceEntry{
		Node:    &api.Node{Node: "node-" + id, Address: host},
		Service: &api.AgentService{ID: id, Service: service, Address: host, Port: p},
	}
}

// eventually polls cond until it holds or 5 s have passed.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
