package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunHTTPKeepsRateAndCounts(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "web.local" {
			http.Error(w, "bad host "+r.Host, http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Instance", "a")
		io.WriteString(w, "hello")
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	res, err := RunHTTP(context.Background(), HTTPConfig{
		URL: srv.URL + "/x", Host: "web.local", Rate: 400, Conns: 4, Duration: 250 * time.Millisecond, CountHeader: "X-Instance",
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 100 || res.OK != 100 || res.Failed() != 0 {
		t.Errorf("sent %d, ok %d, failed %d; want 100, 100, 0 (%v)", res.Sent, res.OK, res.Failed(), res.ErrorSamples)
	}
	if res.ByHeader["a"] != 100 {
		t.Errorf("by header: %v", res.ByHeader)
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections, want 4 kept alive", n)
	}
	if res.P50us <= 0 || res.MaxUs < res.P99us || res.P99us < res.P50us {
		t.Errorf("percentiles out of order: %+v", res)
	}
}

func TestRunHTTPCountsFailures(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusBadGateway)
	}))
	defer srv.Close()
	res, err := RunHTTP(context.Background(), HTTPConfig{URL: srv.URL, Rate: 100, Conns: 1, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Non2xx != res.Sent || res.Sent == 0 {
		t.Errorf("non-2xx %d of %d", res.Non2xx, res.Sent)
	}
	// Nothing listens there: every request is an error, and the run still
	// ends on time.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	res, err = RunHTTP(context.Background(), HTTPConfig{URL: "http://" + addr + "/", Rate: 100, Conns: 2, Duration: 100 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != res.Sent || res.Sent == 0 {
		t.Errorf("errors %d of %d", res.Errors, res.Sent)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("run took %v", d)
	}
}

func TestBulk(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ServeBulk(ctx, ln, 5*time.Second)
	res, err := RunBulk(context.Background(), ln.Addr().String(), 10<<20, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != 10<<20 || res.Gbps <= 0 {
		t.Errorf("got %+v", res)
	}
	if _, err := RunBulk(context.Background(), ln.Addr().String(), MaxBulk+1, time.Second); err == nil {
		t.Error("no error for a transfer over MaxBulk")
	}
}
