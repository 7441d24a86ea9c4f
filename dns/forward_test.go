package dns

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestForwardKeepsTransportAndReply(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			up := startUpstream(t, exampleUpstream)
			s := startServer(t, testConfig(newFakeServices(), up.addr))
			addr := serverAddr(s, network)

			r := ask(t, network, addr, question("example.org.", mdns.TypeA))
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 ||
				r.Answer[0].String() != "example.org.\t42\tIN\tA\t192.0.2.1" || !r.Authoritative {
				t.Errorf("reply %v, want the upstream's AA answer example.org. 42 A 192.0.2.1", r)
			}
			// The upstream's rcode comes through as it is.
			r = ask(t, network, addr, question("missing.example.org.", mdns.TypeA))
			if r.Rcode != mdns.RcodeNameError {
				t.Errorf("rcode %s, want the upstream's NXDOMAIN", mdns.RcodeToString[r.Rcode])
			}
			// A name that only looks like a suffix is not a mesh name.
			r = ask(t, network, addr, question("weblocal.", mdns.TypeA))
			if r.Rcode != mdns.RcodeNameError {
				t.Errorf("rcode %s, want the upstream's NXDOMAIN", mdns.RcodeToString[r.Rcode])
			}
			if got, want := up.seen(), []string{network, network, network}; !slices.Equal(got, want) {
				t.Errorf("upstream saw transports %v, want %v", got, want)
			}
		})
	}
}

func TestForwardKeepsTruncation(t *testing.T) {
	// Like a real resolver: too big for UDP, so TC over UDP and the full
	// answer over TCP.
	up := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg).SetReply(r)
		if w.RemoteAddr().Network() == "udp" {
			m.Truncated = true
		} else {
			m.Answer = append(m.Answer, mustRR("big.example.org. 60 IN A 192.0.2.7"))
		}
		_ = w.WriteMsg(m)
	})
	s := startServer(t, testConfig(newFakeServices(), up.addr))

	r := ask(t, "udp", s.UDPAddr().String(), question("big.example.org.", mdns.TypeA))
	if !r.Truncated || len(r.Answer) != 0 {
		t.Fatalf("udp reply truncated=%v answer=%v, want the upstream's TC and no answer", r.Truncated, r.Answer)
	}
	r = ask(t, "tcp", s.TCPAddr().String(), question("big.example.org.", mdns.TypeA))
	if r.Truncated || len(r.Answer) != 1 {
		t.Fatalf("tcp reply truncated=%v answer=%v, want the full answer", r.Truncated, r.Answer)
	}
}

func TestForwardFailsOver(t *testing.T) {
	live := startUpstream(t, exampleUpstream)
	silent := silentUpstream(t)
	for _, tc := range []struct {
		name    string
		network string
		first   string
		minWait time.Duration
	}{
		{"udp refused", "udp", deadAddr(t), 0},
		{"tcp refused", "tcp", deadAddr(t), 0},
		{"udp timeout", "udp", silent, 200 * time.Millisecond},
		{"tcp timeout", "tcp", silent, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(newFakeServices(), tc.first, live.addr)
			cfg.ForwardTimeout = 200 * time.Millisecond
			s := startServer(t, cfg)
			start := time.Now()
			r := ask(t, tc.network, serverAddr(s, tc.network), question("example.org.", mdns.TypeA))
			if len(r.Answer) != 1 {
				t.Fatalf("reply %v, want the second upstream's answer", r)
			}
			if took := time.Since(start); took < tc.minWait || took > 2*time.Second {
				t.Errorf("answered after %s, want between %s and 2s", took, tc.minWait)
			}
		})
	}
}

func TestForwardAllUpstreamsDown(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			cfg := testConfig(newFakeServices(), deadAddr(t), silentUpstream(t))
			cfg.ForwardTimeout = 100 * time.Millisecond
			s := startServer(t, cfg)
			q := question("example.org.", mdns.TypeA)
			q.SetEdns0(1232, false)
			r := ask(t, network, serverAddr(s, network), q)
			if r.Rcode != mdns.RcodeServerFailure {
				t.Errorf("rcode %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
			}
			if r.IsEdns0() == nil {
				t.Error("SERVFAIL to an EDNS query has no OPT")
			}
		})
	}
}

func TestForwardIgnoresStrayReplies(t *testing.T) {
	// An upstream that first sends a reply with another ID (a late answer
	// to an earlier try) and then the right one.
	up := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		stray := new(mdns.Msg).SetReply(r)
		stray.Id = r.Id + 1
		stray.Rcode = mdns.RcodeRefused
		_ = w.WriteMsg(stray)
		exampleUpstream(w, r)
	})
	s := startServer(t, testConfig(newFakeServices(), up.addr))
	r := ask(t, "udp", s.UDPAddr().String(), question("example.org.", mdns.TypeA))
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("reply %v, want the answer with the query's ID", r)
	}
}

// silentUpstream returns an address that accepts on UDP and TCP and never
// answers.
func silentUpstream(t *testing.T) string {
	t.Helper()
	pc, ln := listenBoth(t)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = pc.Close()
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return pc.LocalAddr().String()
}

func serverAddr(s *Server, network string) string {
	if network == "tcp" {
		return s.TCPAddr().String()
	}
	return s.UDPAddr().String()
}

// A reply larger than a slot of the upstream reader's batch (an EDNS
// answer over 4 KiB) reaches the client whole, from either UDP loop, and
// the replies after it too.
func TestForwardLargeUDPReply(t *testing.T) {
	up := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg).SetReply(r)
		if r.Question[0].Name == "big.example.org." {
			for i := range 200 {
				m.Answer = append(m.Answer, mustRR(fmt.Sprintf("big.example.org. 60 IN TXT \"record %03d of a reply that does not fit in 4 KiB\"", i)))
			}
		} else {
			m.Answer = append(m.Answer, mustRR("small.example.org. 60 IN A 192.0.2.8"))
		}
		m.SetEdns0(65000, false)
		_ = w.WriteMsg(m)
	})
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			s, err := NewServer(testConfig(newFakeServices(), up.addr))
			if err != nil {
				t.Fatal(err)
			}
			s.singleUDP = single
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
			for range 2 {
				q := question("big.example.org.", mdns.TypeTXT)
				q.SetEdns0(65000, false)
				if r := ask(t, "udp", s.UDPAddr().String(), q); r.Truncated || len(r.Answer) != 200 {
					t.Fatalf("reply truncated=%v with %d answers, want all 200", r.Truncated, len(r.Answer))
				}
				if r := ask(t, "udp", s.UDPAddr().String(), question("small.example.org.", mdns.TypeA)); len(r.Answer) != 1 {
					t.Fatalf("reply %v after the large one, want its answer", r)
				}
			}
		})
	}
}
