package dns

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeServices is the test double of Services: a fixed table of VIPs, plus
// services whose lookup fails.
type fakeServices struct {
	vips    map[string]netip.Addr
	ports   map[string][]uint16
	failing map[string]bool

	mu    sync.Mutex
	asked []string
}

func newFakeServices() *fakeServices {
	return &fakeServices{
		vips: map[string]netip.Addr{
			"web": netip.MustParseAddr("127.77.0.1"),
			"db":  netip.MustParseAddr("127.77.0.2"),
			// The subset of web tagged v2, and one with no port known yet.
			"v2.web":   netip.MustParseAddr("127.77.0.3"),
			"noports":  netip.MustParseAddr("127.77.0.4"),
			"brokenpt": netip.MustParseAddr("127.77.0.5"),
		},
		ports: map[string][]uint16{
			"web":    {8080},
			"v2.web": {8080, 9090},
			"db":     {5432},
		},
		failing: map[string]bool{"broken": true},
	}
}

func (f *fakeServices) LookupPorts(_ context.Context, service string) ([]uint16, error) {
	if service == "brokenpt" {
		return nil, errors.New("consul has not answered yet")
	}
	return f.ports[service], nil
}

func (f *fakeServices) LookupName(_ context.Context, vip netip.Addr) (string, bool) {
	for name, a := range f.vips {
		if a == vip {
			return name, true
		}
	}
	return "", false
}

func (f *fakeServices) LookupVIP(_ context.Context, service string) (netip.Addr, bool, error) {
	f.mu.Lock()
	f.asked = append(f.asked, service)
	f.mu.Unlock()
	if f.failing[service] {
		return netip.Addr{}, false, errors.New("consul has not answered yet")
	}
	vip, ok := f.vips[service]
	return vip, ok, nil
}

func (f *fakeServices) lastAsked() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.asked) == 0 {
		return ""
	}
	return f.asked[len(f.asked)-1]
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is a valid config whose upstreams the test fills in.
func testConfig(services Services, upstreams ...string) Config {
	return Config{
		Listen:         "127.0.0.1:0",
		Suffixes:       []string{"local", "service.consul"},
		Services:       services,
		Upstreams:      upstreams,
		ForwardTimeout: 500 * time.Millisecond,
		Logger:         quietLogger(),
	}
}

// startServer starts a server on 127.0.0.1:0 and stops it at test end.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

// upstream is a real miekg server standing in for the app's resolver,
// serving UDP and TCP on one address as a resolver does.
type upstream struct {
	addr string

	mu       sync.Mutex
	networks []string // transport of each query received
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.networks...)
}

// startUpstream serves h on UDP and TCP on one 127.0.0.1 port, recording
// the transport of each query.
func startUpstream(t testing.TB, h mdns.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	record := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		u.mu.Lock()
		u.networks = append(u.networks, w.RemoteAddr().Network())
		u.mu.Unlock()
		h(w, r)
	})
	pc, ln := listenBoth(t)
	u.addr = pc.LocalAddr().String()
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: record}, {Listener: ln, Handler: record}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// listenBoth binds UDP and TCP on the same 127.0.0.1 port.
func listenBoth(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		_ = pc.Close()
	}
	t.Fatal("no port free on both udp and tcp")
	return nil, nil
}

// exampleUpstream answers example.org. with 192.0.2.1 (AA set, TTL 42),
// everything else NXDOMAIN.
func exampleUpstream(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg).SetReply(r)
	m.Authoritative = true
	if r.Question[0].Name == "example.org." && r.Question[0].Qtype == mdns.TypeA {
		m.Answer = append(m.Answer, mustRR("example.org. 42 IN A 192.0.2.1"))
	} else {
		m.Rcode = mdns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// deadAddr returns an address with nothing listening on UDP or TCP.
func deadAddr(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	return addr
}

func mustRR(s string) mdns.RR {
	rr, err := mdns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

// ask sends one query to addr over network and returns the reply.
func ask(t testing.TB, network, addr string, q *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("asking %s %s for %s: %v", network, addr, q.Question[0].Name, err)
	}
	if r.Id != q.Id {
		t.Fatalf("reply ID %d, query ID %d", r.Id, q.Id)
	}
	return r
}

func question(name string, qtype uint16) *mdns.Msg {
	return new(mdns.Msg).SetQuestion(name, qtype)
}

// recorder is a minimal ResponseWriter that keeps what the handler wrote.
type recorder struct {
	remote net.Addr
	msg    *mdns.Msg
	raw    []byte
}

func newRecorder(network string) *recorder {
	if network == "tcp" {
		return &recorder{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	}
	return &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
}

func (r *recorder) LocalAddr() net.Addr        { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr       { return r.remote }
func (r *recorder) WriteMsg(m *mdns.Msg) error { r.msg = m; return nil }
func (r *recorder) Write(b []byte) (int, error) {
	r.raw = append([]byte(nil), b...)
	return len(b), nil
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

func timeNowPlus(ms int) time.Time { return time.Now().Add(time.Duration(ms) * time.Millisecond) }

// staticServices answers from a map without recording, for benchmarks.
type staticServices map[string]netip.Addr

func (s staticServices) LookupVIP(_ context.Context, service string) (netip.Addr, bool, error) {
	vip, ok := s[service]
	return vip, ok, nil
}

func (s staticServices) LookupPorts(context.Context, string) ([]uint16, error) { return nil, nil }

func (s staticServices) LookupName(context.Context, netip.Addr) (string, bool) { return "", false }

func newFakeServicesNoRecord() staticServices {
	return staticServices{"web": netip.MustParseAddr("127.77.0.1")}
}
