package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// twinServers serves one Server's handler on our UDP loop and, beside it,
// on miekg/dns's UDP server (what served UDP before), so a test can send
// both the same bytes and compare what comes back.
type twinServers struct {
	ours, theirs string
}

func startTwins(t testing.TB, cfg Config) twinServers {
	t.Helper()
	return startTwinsLoop(t, cfg, false)
}

// startTwinsLoop is startTwins with our loop batched (recvmmsg/sendmmsg,
// what Start picks on Linux) or, with single, one datagram per call (the
// fallback elsewhere).
func startTwinsLoop(t testing.TB, cfg Config, single bool) twinServers {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	s.singleUDP = single
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
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: s, UDPSize: udpReadSize}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return twinServers{ours: s.UDPAddr().String(), theirs: pc.LocalAddr().String()}
}

// exchangeRaw sends b to addr from a new socket and returns the replies
// that arrive within wait, as hex strings.
func exchangeRaw(t testing.TB, addr string, b []byte, wait time.Duration) []string {
	t.Helper()
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	var got []string
	buf := make([]byte, maxMsgLen)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		n, err := conn.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return got
		}
		if err != nil {
			t.Fatalf("reading from %s: %v", addr, err)
		}
		got = append(got, fmt.Sprintf("%x", buf[:n]))
	}
}

func mustPack(m *mdns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

// udpPackets are datagrams of every kind the UDP loop tells apart.
func udpPackets() map[string][]byte {
	withBits := func(bits uint16, counts ...uint16) []byte {
		b := mustPack(question("web.local.", mdns.TypeA))
		b[2], b[3] = byte(bits>>8), byte(bits)
		for i, c := range counts {
			b[4+2*i], b[5+2*i] = byte(c>>8), byte(c)
		}
		return b
	}
	edns := question("web.local.", mdns.TypeA)
	edns.SetEdns0(1232, true)
	notify := question("web.local.", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeNotify
	update := question("local.", mdns.TypeSOA)
	update.Opcode = mdns.OpcodeUpdate
	chaos := question("web.local.", mdns.TypeA)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	srvEDNS := question("_web._v2.local.", mdns.TypeSRV)
	srvEDNS.SetEdns0(512, false)
	return map[string][]byte{
		"subset A":             mustPack(question("v2.Web.local.", mdns.TypeA)),
		"mesh SRV":             mustPack(question("web.local.", mdns.TypeSRV)),
		"RFC 2782 SRV":         mustPack(question("_web._tcp.service.consul.", mdns.TypeSRV)),
		"RFC 2782 A":           mustPack(question("_web._tcp.local.", mdns.TypeA)),
		"subset SRV with EDNS": mustPack(srvEDNS),
		"SRV, port lookup off": mustPack(question("brokenpt.local.", mdns.TypeSRV)),
		"PTR of a VIP":         mustPack(question("3.0.77.127.in-addr.arpa.", mdns.TypePTR)),
		"PTR of another":       mustPack(question("1.2.0.192.in-addr.arpa.", mdns.TypePTR)),
		"mesh A":               mustPack(question("web.local.", mdns.TypeA)),
		"mesh AAAA":            mustPack(question("web.local.", mdns.TypeAAAA)),
		"mesh with EDNS":       mustPack(edns),
		"unknown service":      mustPack(question("nosuch.local.", mdns.TypeA)),
		"apex SOA":             mustPack(question("service.consul.", mdns.TypeSOA)),
		"chaos class":          mustPack(chaos),
		"notify":               mustPack(notify),
		"update":               mustPack(update),
		"response bit":         withBits(0x8100),
		"all header bits":      withBits(0x07f0),
		"no question":          withBits(0x0100, 0),
		"two questions":        withBits(0x0100, 2),
		"two answers":          withBits(0x0100, 1, 2),
		"three additional":     withBits(0x0100, 1, 0, 0, 3),
		"short header":         {0xbe, 0xef, 0x01},
		"one byte":             {0x00},
		"text":                 []byte("definitely not dns"),
		"zeros":                make([]byte, 600),
		"name off the end":     {0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, 'a', 'b'},
		"pointer loop":         {0xff, 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1},
		"bigger than the read": append(mustPack(question("web.local.", mdns.TypeA)), make([]byte, udpReadSize)...),
	}
}

// Our UDP loop, batched or not, answers every kind of datagram exactly as
// miekg/dns's server did with the same handler: the same bytes, or nothing
// when it dropped it.
func TestUDPLoopAnswersAsMiekgServer(t *testing.T) {
	for _, loop := range []struct {
		name   string
		single bool
	}{{"batched", false}, {"single", true}} {
		t.Run(loop.name, func(t *testing.T) {
			twins := startTwinsLoop(t, testConfig(newFakeServices(), deadAddr(t)), loop.single)
			for name, b := range udpPackets() {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					ours := exchangeRaw(t, twins.ours, b, 150*time.Millisecond)
					theirs := exchangeRaw(t, twins.theirs, b, 150*time.Millisecond)
					if fmt.Sprint(ours) != fmt.Sprint(theirs) {
						t.Errorf("our loop answered %v, miekg/dns's server %v", ours, theirs)
					}
				})
			}
		})
	}
}

// FuzzUDPLoop sends arbitrary datagrams to both fronts: ours must not
// crash and must answer what miekg/dns's server answers.
func FuzzUDPLoop(f *testing.F) {
	for _, b := range udpPackets() {
		f.Add(b)
	}
	cfg := testConfig(newFakeServices(), deadAddr(f))
	cfg.ForwardTimeout = 50 * time.Millisecond
	twins := startTwins(f, cfg)
	f.Fuzz(func(t *testing.T, b []byte) {
		ours := exchangeRaw(t, twins.ours, b, 100*time.Millisecond)
		theirs := exchangeRaw(t, twins.theirs, b, 100*time.Millisecond)
		if fmt.Sprint(ours) != fmt.Sprint(theirs) {
			t.Errorf("for %x our loop answered %v, miekg/dns's server %v", b, ours, theirs)
		}
	})
}

// Beyond the bound on queries forwarding at once, a query is answered
// SERVFAIL at once instead of waiting; mesh names are still answered.
func TestUDPForwardingIsBounded(t *testing.T) {
	const limit = 8
	cfg := testConfig(newFakeServices(), silentUpstream(t))
	cfg.ForwardTimeout = 10 * time.Second
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.forwardLimit = limit
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = s.Shutdown(ctx) // queries still forward: a deadline error is expected
	})
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range limit {
		q := question(fmt.Sprintf("n%d.example.org.", i), mdns.TypeA)
		q.Id = uint16(i)
		if _, err := conn.Write(mustPack(q)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		n := 0
		for _, up := range s.udpUps {
			for i := range up.slots {
				if c := up.slots[i].Load(); c != nil {
					n += c.inflight()
				}
			}
		}
		return n == limit
	})
	start := time.Now()
	r := ask(t, "udp", s.UDPAddr().String(), question("one-too-many.example.org.", mdns.TypeA))
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("rcode %s beyond the bound, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("SERVFAIL beyond the bound took %s, want it at once", took)
	}
	if r := ask(t, "udp", s.UDPAddr().String(), question("web.local.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("mesh name while forwarding is full: %v, want its answer", r)
	}
}

// Shutdown with queries forwarding over UDP answers them SERVFAIL (the
// server cancels them) and returns within its context.
func TestShutdownCancelsUDPForwarding(t *testing.T) {
	cfg := testConfig(newFakeServices(), silentUpstream(t))
	cfg.ForwardTimeout = time.Minute
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(mustPack(question("example.org.", mdns.TypeA))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { c := s.udpUps[0].slots[1].Load(); return c != nil && c.inflight() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = s.Shutdown(ctx) // may report the deadline: a query was in flight
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Shutdown with a query in flight took %s", took)
	}
	waitFor(t, func() bool { c := s.udpUps[0].slots[1].Load(); return c == nil })
}

// FuzzUDPHandle drives the UDP loop's packet handling in process, fast: it
// must never panic, drop exactly what miekg/dns drops (a header too short
// to read, a response) and answer everything else once, with the query's ID.
func FuzzUDPHandle(f *testing.F) {
	for _, b := range udpPackets() {
		f.Add(b)
	}
	s, err := NewServer(testConfig(newFakeServices(), "127.0.0.1:9"))
	if err != nil {
		f.Fatal(err)
	}
	// No forwarding slots: outside names get SERVFAIL inline, so every
	// answer is written before handle returns.
	s.forwardLimit = 0
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sink.Close() })
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = conn.Close() })
	u := newUDPServer(s, conn)
	w := &udpWriter{conn: conn, to: sink.LocalAddr().(*net.UDPAddr).AddrPort(), out: make([]byte, 0, udpReadSize)}
	buf := make([]byte, maxMsgLen)
	marker := []byte{0xff} // shorter than any reply: a DNS header is 12 bytes
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > udpReadSize {
			b = b[:udpReadSize] // what the read loop would have read
		}
		u.handle(w, b)
		// A marker sent after handle from the same socket arrives after
		// every reply it wrote (loopback keeps one socket's datagrams in
		// order), so reading up to it collects exactly this input's
		// replies however slow the machine is. A short read deadline
		// instead left a late reply to be counted for the next input.
		if _, err := conn.WriteToUDPAddrPort(marker, w.to); err != nil {
			t.Fatal(err)
		}
		var replies [][]byte
		_ = sink.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			n, err := sink.Read(buf)
			if err != nil {
				t.Fatalf("reading the replies to %x: %v", b, err)
			}
			if bytes.Equal(buf[:n], marker) {
				break
			}
			replies = append(replies, append([]byte(nil), buf[:n]...))
		}
		dropped := len(b) < headerLen || b[2]&0x80 != 0
		if dropped {
			if len(replies) != 0 {
				t.Fatalf("answered %x with %x, want it dropped", b, replies)
			}
			return
		}
		if len(replies) != 1 {
			t.Fatalf("answered %x with %d replies, want 1", b, len(replies))
		}
		r := replies[0]
		if len(r) < headerLen || r[0] != b[0] || r[1] != b[1] || r[2]&0x80 == 0 {
			t.Fatalf("reply %x to %x: want the query's ID and the QR bit", r, b)
		}
	})
}
