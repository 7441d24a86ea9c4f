package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestNewServerRejectsBadConfig(t *testing.T) {
	valid := func() Config { return testConfig(newFakeServices(), "127.0.0.1:53") }
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{"no services", func(c *Config) { c.Services = nil }, "Services"},
		{"no upstreams", func(c *Config) { c.Upstreams = nil }, "Upstreams"},
		{"upstream host name", func(c *Config) { c.Upstreams = []string{"dns.example.org:53"} }, "Upstreams"},
		{"upstream without port", func(c *Config) { c.Upstreams = []string{"127.0.0.1"} }, "Upstreams"},
		{"upstream port 0", func(c *Config) { c.Upstreams = []string{"127.0.0.1:0"} }, "Upstreams"},
		{"listen not ip:port", func(c *Config) { c.Listen = "localhost:15053" }, "Listen"},
		{"suffix with dot", func(c *Config) { c.Suffixes = []string{"local."} }, "Suffixes"},
		{"suffix with leading dot", func(c *Config) { c.Suffixes = []string{".local"} }, "Suffixes"},
		{"empty suffix", func(c *Config) { c.Suffixes = []string{""} }, "Suffixes"},
		{"suffix with empty label", func(c *Config) { c.Suffixes = []string{"service..consul"} }, "Suffixes"},
		{"suffix with space", func(c *Config) { c.Suffixes = []string{"my zone"} }, "Suffixes"},
		{"suffix twice", func(c *Config) { c.Suffixes = []string{"local", "LOCAL"} }, "Suffixes"},
		{"negative timeout", func(c *Config) { c.ForwardTimeout = -time.Second }, "ForwardTimeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.change(&cfg)
			_, err := NewServer(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("NewServer error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestNewServerDefaults(t *testing.T) {
	s, err := NewServer(Config{Services: newFakeServices(), Upstreams: []string{"[::1]:53"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Listen != DefaultListen || s.cfg.TTL != DefaultTTL || s.cfg.ForwardTimeout != DefaultForwardTimeout ||
		s.cfg.Dialer == nil || s.cfg.Logger == nil {
		t.Errorf("defaults not applied: %+v", s.cfg)
	}
	if strings.Join(s.names, ",") != "service.consul,local" {
		t.Errorf("suffixes %v, want service.consul,local (longest first)", s.names)
	}
	// The defaults are seen by a client: a mesh answer carries TTL 5.
	w := newRecorder("udp")
	s.ServeDNS(w, question("web.local.", mdns.TypeA))
	if w.msg == nil || len(w.msg.Answer) != 1 || w.msg.Answer[0].Header().Ttl != DefaultTTL {
		t.Errorf("reply %v, want one answer with TTL %d", w.msg, DefaultTTL)
	}
}

func TestConfiguredTTLAndSuffix(t *testing.T) {
	cfg := testConfig(newFakeServices(), "127.0.0.1:53")
	cfg.Suffixes = []string{"Mesh.Internal"}
	cfg.TTL = 30
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := newRecorder("udp")
	s.ServeDNS(w, question("web.mesh.internal.", mdns.TypeA))
	if w.msg == nil || len(w.msg.Answer) != 1 || w.msg.Answer[0].Header().Ttl != 30 {
		t.Fatalf("reply %v, want one answer with TTL 30", w.msg)
	}
	w = newRecorder("udp")
	s.ServeDNS(w, question("nope.mesh.internal.", mdns.TypeA))
	soa, ok := onlySOA(w.msg.Ns)
	if !ok || soa.Hdr.Name != "mesh.internal." || soa.Minttl != 30 {
		t.Fatalf("authority %v, want the SOA of mesh.internal. with minimum 30", w.msg.Ns)
	}
}

func TestStartFailsWhenPortTaken(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			var taken string
			if network == "udp" {
				pc, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				taken = pc.LocalAddr().String()
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				taken = ln.Addr().String()
			}
			cfg := testConfig(newFakeServices(), "127.0.0.1:53")
			cfg.Listen = taken
			s, err := NewServer(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Start()
			if err == nil || !strings.Contains(err.Error(), taken) {
				t.Fatalf("Start error %v, want one naming %s", err, taken)
			}
			// Nothing stays bound: the other transport's port is free again.
			if network == "tcp" {
				pc, err := net.ListenPacket("udp", taken)
				if err != nil {
					t.Fatalf("udp %s still bound after failed Start: %v", taken, err)
				}
				pc.Close()
			}
		})
	}
}

func TestStartBindsBothOnOneAddress(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), "127.0.0.1:53"))
	if s.UDPAddr().String() != s.TCPAddr().String() {
		t.Logf("udp %s and tcp %s differ (port was taken); allowed but unusual", s.UDPAddr(), s.TCPAddr())
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestShutdown(t *testing.T) {
	s, err := NewServer(testConfig(newFakeServices(), "127.0.0.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	if s.UDPAddr() != nil || s.TCPAddr() != nil {
		t.Error("addresses before Start")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	tcpAddr := s.TCPAddr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", tcpAddr, time.Second); err == nil {
		conn.Close()
		t.Error("tcp still accepting after Shutdown")
	}
	if err := s.Start(); err == nil {
		t.Error("Start after Shutdown succeeded")
	}
}

func TestShutdownCancelsForwarding(t *testing.T) {
	cfg := testConfig(newFakeServices(), silentUpstream(t))
	cfg.ForwardTimeout = time.Minute
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &mdns.Client{Net: "tcp", Timeout: 30 * time.Second}
		_, _, _ = c.Exchange(question("example.org.", mdns.TypeA), s.TCPAddr().String())
	}()
	time.Sleep(100 * time.Millisecond) // let the query reach the silent upstream
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = s.Shutdown(ctx) // may report the deadline: a query was in flight
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("query still forwarding 5s after Shutdown")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Shutdown with a query in flight took %s", took)
	}
}

func TestInvalidVIPIsServfail(t *testing.T) {
	services := newFakeServices()
	services.vips["ghost"] = netip.Addr{}
	s, err := NewServer(testConfig(services, "127.0.0.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	w := newRecorder("udp")
	s.ServeDNS(w, question("ghost.local.", mdns.TypeA))
	if w.msg == nil || w.msg.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("reply %v, want SERVFAIL", w.msg)
	}
}
