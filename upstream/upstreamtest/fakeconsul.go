package upstreamtest

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
	// CatalogPath is the path of Consul's catalog of services.
	CatalogPath = "/v1/catalog/services"
	// LeaderPath is what the liveness check asks.
	LeaderPath = "/v1/status/leader"
)

// HealthPath is the path of the instances of service in Consul's health API.
func HealthPath(service string) string { return "/v1/health/service/" + service }

// FakeConsul speaks the Consul endpoints upstream uses, including
// blocking on ?index= until the test changes the answer.
type FakeConsul struct {
	srv *httptest.Server

	mu       sync.Mutex
	hung     bool // answer nothing at all, as a stopped Consul process
	answers  map[string]*FakeAnswer
	changed  chan struct{} // closed and replaced on every change
	requests map[string][]string
}

// FakeAnswer is what FakeConsul answers on one path.
type FakeAnswer struct {
	Index uint64
	Body  any
	Fail  bool
	Hold  bool // answer nothing until this changes, as a slow Consul
	// FilteredByACLs says that Consul's ACLs left part of the answer out.
	FilteredByACLs bool
	// Code, when not 0, is the error status to answer with, and ErrBody
	// its body (as Consul's 403 "Permission denied: ... lacks permission").
	Code    int
	ErrBody string
}

// NewFakeConsul starts a FakeConsul that stops when the test ends.
func NewFakeConsul(t testing.TB) *FakeConsul {
	t.Helper()
	fc := &FakeConsul{
		answers:  make(map[string]*FakeAnswer),
		changed:  make(chan struct{}),
		requests: make(map[string][]string),
	}
	fc.answers[LeaderPath] = &FakeAnswer{Index: 1, Body: "127.0.0.1:8300"}
	fc.srv = httptest.NewServer(http.HandlerFunc(fc.serve))
	t.Cleanup(func() {
		fc.SetHung(false) // release held requests, or Close waits for them
		fc.srv.Close()
	})
	return fc
}

// Client is a Consul client of fc.
func (fc *FakeConsul) Client(t testing.TB) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: fc.srv.Listener.Addr().String(), Scheme: "http"})
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}

func (fc *FakeConsul) serve(w http.ResponseWriter, r *http.Request) {
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
		if a.Code != 0 {
			fc.mu.Unlock()
			http.Error(w, a.ErrBody, a.Code)
			return
		}
		if a.Fail {
			fc.mu.Unlock()
			http.Error(w, "fake consul: failing on purpose", http.StatusInternalServerError)
			return
		}
		if !a.Hold && (indexParam == "" || indexParam != strconv.FormatUint(a.Index, 10)) {
			body, _ := json.Marshal(a.Body)
			fc.mu.Unlock()
			w.Header().Set("X-Consul-Index", strconv.FormatUint(a.Index, 10))
			if a.FilteredByACLs {
				w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
			}
			// Sent by Consul on every read; the client stops reading the
			// headers that follow it when it is missing.
			w.Header().Set("X-Consul-LastContact", "0")
			w.Header().Set("X-Consul-KnownLeader", "true")
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

// Set makes a the answer on path, and wakes the queries that wait on it.
func (fc *FakeConsul) Set(path string, a FakeAnswer) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.answers[path] = &a
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// SetCatalog makes the catalog list names, at index.
func (fc *FakeConsul) SetCatalog(index uint64, names ...string) {
	services := map[string][]string{}
	for _, n := range names {
		services[n] = []string{}
	}
	fc.Set(CatalogPath, FakeAnswer{Index: index, Body: services})
}

// SetHealth makes entries the instances of service, at index.
func (fc *FakeConsul) SetHealth(service string, index uint64, entries ...*api.ServiceEntry) {
	if entries == nil {
		entries = []*api.ServiceEntry{}
	}
	fc.Set(HealthPath(service), FakeAnswer{Index: index, Body: entries})
}

// SetFailing makes queries of path fail with a 500, or answer again.
func (fc *FakeConsul) SetFailing(path string, fail bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	a := fc.answers[path]
	if a == nil {
		a = &FakeAnswer{}
		fc.answers[path] = a
	}
	a.Fail = fail
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// SetHolding makes queries of path wait, without an answer, until it is
// released (or their wait passes).
func (fc *FakeConsul) SetHolding(path string, hold bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	a := fc.answers[path]
	if a == nil {
		a = &FakeAnswer{Body: map[string][]string{}}
		fc.answers[path] = a
	}
	a.Hold = hold
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// SetHung makes every request wait, without an answer and without end,
// until it is released: a Consul whose process is stopped (SIGSTOP), or
// whose container is paused.
func (fc *FakeConsul) SetHung(hung bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.hung = hung
	close(fc.changed)
	fc.changed = make(chan struct{})
}

// IndexesSent returns the ?index= of every request to path so far ("" for none).
func (fc *FakeConsul) IndexesSent(path string) []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]string(nil), fc.requests[path]...)
}

// Instance is a passing instance of service at addr ("host:port").
func Instance(t testing.TB, service, id, addr string) *api.ServiceEntry {
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

// Eventually polls cond until it holds or 5 s have passed.
func Eventually(t testing.TB, what string, cond func() bool) {
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
