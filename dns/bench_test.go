package dns

import (
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// discardWriter is the cheapest ResponseWriter that still packs the reply,
// as the real one does, so the benchmark counts the whole answer.
type discardWriter struct {
	recorder
	packed int
}

func (w *discardWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	w.packed = len(b)
	return err
}

func BenchmarkServeDNSMesh(b *testing.B) {
	s, err := NewServer(testConfig(newFakeServicesNoRecord(), "127.0.0.1:53"))
	if err != nil {
		b.Fatal(err)
	}
	q := question("web.local.", mdns.TypeA)
	w := &discardWriter{recorder: *newRecorder("udp")}
	b.ReportAllocs()
	for b.Loop() {
		s.ServeDNS(w, q)
	}
	if w.packed == 0 {
		b.Fatal("nothing written")
	}
}

func BenchmarkServeDNSMeshUDP(b *testing.B) {
	s := startServer(b, testConfig(newFakeServicesNoRecord(), "127.0.0.1:53"))
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	query, err := question("web.local.", mdns.TypeA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(query); err != nil {
			b.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		if n < headerLen || buf[3]&0x0f != mdns.RcodeSuccess {
			b.Fatalf("bad reply of %d bytes", n)
		}
	}
}

// BenchmarkForwardUDP forwards one query at a time over UDP to an upstream
// on loopback that answers at once: the cost of the forwarding path, with a
// client and an upstream as cheap as they get.
func BenchmarkForwardUDP(b *testing.B) {
	up := startRawUpstream(b, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) { send(pc, from, answerFor(q)) })
	s := startServer(b, testConfig(newFakeServicesNoRecord(), up.addr))
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	query, err := question("n1.example.org.", mdns.TypeA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(query); err != nil {
			b.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		if n < headerLen || buf[3]&0x0f != mdns.RcodeSuccess || buf[7] != 1 {
			b.Fatalf("bad reply of %d bytes", n)
		}
	}
}

// BenchmarkUDPHandleMesh is the UDP loop's work on one mesh query, socket
// calls aside, from the datagram to the packed reply: on the fast path, and
// on the general path (miekg/dns unpacks, answerMesh, miekg/dns packs) that
// the fast path stands in for.
func BenchmarkUDPHandleMesh(b *testing.B) {
	for _, path := range []string{"fast", "general"} {
		b.Run(path, func(b *testing.B) {
			cfg := testConfig(newFakeServicesNoRecord(), "127.0.0.1:53")
			cfg.Metrics = &countingMetrics{} // as the agent runs it
			s, err := NewServer(cfg)
			if err != nil {
				b.Fatal(err)
			}
			u := newUDPServer(s, nil)
			if path == "general" {
				u.fast = nil
			}
			w := &udpWriter{out: make([]byte, 0, 512), batched: true}
			q := mustPack(question("web.local.", mdns.TypeA))
			b.ReportAllocs()
			for b.Loop() {
				w.reply = nil
				u.handle(w, q)
			}
			if len(w.reply) == 0 {
				b.Fatal("nothing written")
			}
		})
	}
}
