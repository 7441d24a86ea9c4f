// Package inproc holds Go benchmarks of meshlet's hot paths that run in one
// process, without namespaces or root: one proxied HTTP request through
// the routing core and its outbound dispatcher (a real TCP connection in,
// a pooled one out). The DNS
// answer has its own in dns/bench_test.go.
//
// The client and the instance here are raw sockets that allocate nothing
// per request, so allocs/op and B/op are meshlet's own.
//
//	go test -run '^$' -bench . -benchmem ./bench/inproc/ ./dns/
package inproc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/metrics"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/outbound"
)

const payloadSize = 1024

// startInstance serves a fixed 1 KiB answer to every request on every
// keep-alive connection, and returns its address.
func startInstance(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(payloadSize) +
		"\r\nContent-Type: text/plain\r\nX-Instance: web-1\r\n\r\n" + strings.Repeat("a", payloadSize))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if err := skipHeader(br); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// skipHeader reads up to the empty line that ends a header block and
// returns the Content-Length it saw (0 if none).
func skipHeader(br *bufio.Reader) error {
	_, err := readHeader(br)
	return err
}

func readHeader(br *bufio.Reader) (int, error) {
	n := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			return n, nil
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n = 0
			for _, c := range bytes.TrimSpace(v) {
				n = n*10 + int(c-'0')
			}
		}
	}
}

// fakeConsul answers the catalog and health endpoints with one service
// and one instance, and holds blocking queries until they time out.
func fakeConsul(tb testing.TB, service, addr string) *api.Client {
	tb.Helper()
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	entry := &api.ServiceEntry{
		Node:    &api.Node{Node: "node-1", Address: host},
		Service: &api.AgentService{ID: service + "-1", Service: service, Address: host, Port: port},
		Checks:  api.HealthChecks{},
	}
	catalogEntry := &api.CatalogService{Node: "node-1", Address: host, ServiceID: service + "-1", ServiceName: service, ServiceAddress: host, ServicePort: port}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body any
		switch {
		case r.URL.Path == "/v1/catalog/services":
			body = map[string][]string{service: {}}
		case r.URL.Path == "/v1/health/service/"+service:
			body = []*api.ServiceEntry{entry}
		case r.URL.Path == "/v1/catalog/service/"+service:
			body = []*api.CatalogService{catalogEntry}
		default:
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("index") == "7" {
			// Nothing changes: hold the blocking query until it is
			// cancelled, or at most its wait.
			wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
			if err != nil || wait > time.Minute {
				wait = time.Minute
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(wait):
			}
		}
		w.Header().Set("X-Consul-Index", "7")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(body)
	}))
	tb.Cleanup(srv.Close)
	c, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String(), Scheme: "http"})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// startMesh runs a Mesh for service "web" in front of one instance and
// returns the address of a listener whose connections it serves, as the
// agent's outbound listener does after the redirect. It counts in
// Prometheus metrics as the agent does; accessLog, when not nil, gets the
// access log.
func startMesh(tb testing.TB, accessLog ...*slog.Logger) string {
	tb.Helper()
	cfg := upstream.Config{Consul: fakeConsul(tb, "web", startInstance(tb)), Metrics: metrics.New()}
	if len(accessLog) > 0 {
		cfg.AccessLog = accessLog[0]
	}
	m, err := upstream.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		m.Run(ctx)
	}()
	m.Watch("web")
	d, err := outbound.New(m, outbound.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go d.ServeConn(ctx, c, "web", "web.local")
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		d.Shutdown(sctx)
		scancel()
		cancel()
		<-runDone
	})
	return ln.Addr().String()
}

// client is one keep-alive connection that sends GET / and reads the
// answer without allocating.
type client struct {
	c  net.Conn
	br *bufio.Reader
}

var request = []byte("GET /payload HTTP/1.1\r\nHost: web.local\r\nUser-Agent: bench\r\n\r\n")

func dial(tb testing.TB, addr string) *client {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &client{c: c, br: bufio.NewReaderSize(c, 8<<10)}
}

func (cl *client) do() error {
	if _, err := cl.c.Write(request); err != nil {
		return err
	}
	status, err := cl.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("status line %q", status)
	}
	n, err := readHeader(cl.br)
	if err != nil {
		return err
	}
	_, err = cl.br.Discard(n)
	return err
}

// waitReady sends requests until the mesh knows the instance.
func waitReady(tb testing.TB, cl *client) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := cl.do()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mesh never answered 200: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkProxiedRequest is one request and its 1 KiB answer through the
// mesh on a keep-alive connection, one at a time.
func BenchmarkProxiedRequest(b *testing.B) {
	cl := dial(b, startMesh(b))
	waitReady(b, cl)
	b.ReportAllocs()
	for b.Loop() {
		if err := cl.do(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxiedRequestAccessLog is BenchmarkProxiedRequest with the
// access log on (JSON lines, written to nowhere): the cost of one line.
func BenchmarkProxiedRequestAccessLog(b *testing.B) {
	cl := dial(b, startMesh(b, slog.New(slog.NewJSONHandler(io.Discard, nil))))
	waitReady(b, cl)
	b.ReportAllocs()
	for b.Loop() {
		if err := cl.do(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxiedRequestParallel is the same over GOMAXPROCS×4 client
// connections at once.
func BenchmarkProxiedRequestParallel(b *testing.B) {
	addr := startMesh(b)
	waitReady(b, dial(b, addr))
	b.SetParallelism(4)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		cl := dial(b, addr)
		for pb.Next() {
			if err := cl.do(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestProxiedRequest keeps the benchmark's set-up working under go test.
func TestProxiedRequest(t *testing.T) {
	cl := dial(t, startMesh(t))
	waitReady(t, cl)
	for range 10 {
		if err := cl.do(); err != nil {
			t.Fatal(err)
		}
	}
}
