package registration

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestVerdict(t *testing.T) {
	tests := []struct {
		name             string
		success, failure int
		results          string // p: pass, f: fail
		want             string // state after each result: P passing, C critical
	}{
		{"starts critical, one pass turns it passing", 1, 3, "pfffp", "PPPCP"},
		{"failures under the threshold keep it passing", 1, 3, "pffpffpfff", "PPPPPPPPPC"},
		{"success threshold", 3, 1, "ppfpppf", "CCCCCPC"},
		{"failures before any pass keep it critical", 1, 1, "fffp", "CCCP"},
		{"one failure with threshold one", 1, 1, "pfp", "PCP"},
	}
	for _, tt := range tests {
		v := verdict{successThreshold: tt.success, failureThreshold: tt.failure}
		var got strings.Builder
		for _, r := range tt.results {
			v.observe(r == 'p')
			if v.passing {
				got.WriteByte('P')
			} else {
				got.WriteByte('C')
			}
		}
		if got.String() != tt.want {
			t.Errorf("%s: %s gave %s, want %s", tt.name, tt.results, got.String(), tt.want)
		}
	}
}

func TestHTTPProber(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("fine"))
		case "/moved":
			http.Redirect(w, r, "/elsewhere-that-fails", http.StatusFound)
		case "/missing":
			http.NotFound(w, r)
		case "/sick":
			http.Error(w, "no", http.StatusServiceUnavailable)
		case "/slow":
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	tests := []struct {
		path string
		ok   bool
		out  string
	}{
		{"/ok", true, "200 OK"},
		{"/moved", true, "302 Found"},
		{"/missing", false, "404 Not Found"},
		{"/sick", false, "503 Service Unavailable"},
		{"/slow", false, "Timeout"},
	}
	for _, tt := range tests {
		p := newHTTPProber(srv.URL+tt.path, 200*time.Millisecond)
		start := time.Now()
		ok, out := p.probe(context.Background())
		if ok != tt.ok || !strings.Contains(out, tt.out) {
			t.Errorf("%s: %v %q; want %v and %q", tt.path, ok, out, tt.ok, tt.out)
		}
		if time.Since(start) > time.Second {
			t.Errorf("%s: took %v, past its timeout", tt.path, time.Since(start))
		}
	}
}

func TestTCPProber(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	p := newProber(Check{Probe: ProbeTCP}, addr)
	if ok, out := p.probe(context.Background()); !ok {
		t.Errorf("listening port: %q", out)
	}
	ln.Close()
	if ok, out := p.probe(context.Background()); ok || !strings.Contains(out, "refused") {
		t.Errorf("closed port: %v %q", ok, out)
	}
	if newProber(Check{Probe: ProbeNone}, addr) != nil {
		t.Error("ProbeNone should not probe")
	}
}
