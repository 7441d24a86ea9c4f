package dns

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// loadOutstanding is how many queries the load client keeps in flight, as
// the S4 bench's dnsperf does (-q 100, one socket).
const loadOutstanding = 100

// loadBurst is how many replies the client collects before sending the
// queries that replace them in one sendmmsg, to keep the client cheap
// beside the server it measures on the same core.
const loadBurst = 16

// runLoad drives the server at addr from one client socket with
// loadOutstanding queries in flight until b.Loop ends, one iteration per
// reply, and reports q/s and the queries lost (never answered within a
// second). check vets each reply.
func runLoad(b *testing.B, addr string, query []byte, check func(reply []byte) error) {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	pc := ipv4.NewPacketConn(conn.(*net.UDPConn))
	burst := make([]ipv4.Message, loadOutstanding)
	for i := range burst {
		burst[i].Buffers = [][]byte{query}
	}
	send := func(n int) {
		for n > 0 {
			sent, err := pc.WriteBatch(burst[:n], 0)
			if err != nil {
				b.Fatalf("sending %d queries: %v", n, err)
			}
			n -= sent
		}
	}
	buf := make([]byte, 512)
	inflight, owed, lost := loadOutstanding, 0, 0
	send(loadOutstanding)
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	b.ReportAllocs()
	for b.Loop() {
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Whatever is still out was dropped somewhere: count it,
				// and fill the window again.
				lost += inflight
				send(loadOutstanding)
				inflight, owed = loadOutstanding, 0
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				continue
			}
			if err != nil {
				b.Fatal(err)
			}
			if err := check(buf[:n]); err != nil {
				b.Fatalf("reply %x: %v", buf[:n], err)
			}
			break
		}
		inflight--
		if owed++; owed == loadBurst {
			send(owed)
			inflight += owed
			owed = 0
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "q/s")
	b.ReportMetric(float64(lost), "lost")
}

// answered accepts a NOERROR reply with one answer.
func answered(reply []byte) error {
	if len(reply) < headerLen || reply[2]&0x80 == 0 || reply[3]&0x0f != mdns.RcodeSuccess || reply[7] != 1 {
		return errors.New("want a NOERROR response with one answer")
	}
	return nil
}

// BenchmarkUDPLoadMesh is the S4 bench's mesh-name load in process: one
// client socket, 100 queries outstanding, every reply answered by the
// server's real UDP loop. Run on one core (taskset -c 1) it shares that
// core with the client, whose cost is the same before and after a change.
// Sub-benchmarks: the loop as Start runs it (batched, GSO), batched without
// GSO, and one datagram per call (the fallback).
func BenchmarkUDPLoadMesh(b *testing.B) {
	for _, loop := range []struct {
		name          string
		single, noGSO bool
	}{{"batch+gso", false, false}, {"batch", false, true}, {"single", true, true}} {
		b.Run(loop.name, func(b *testing.B) {
			s, err := NewServer(testConfig(newFakeServicesNoRecord(), "127.0.0.1:53"))
			if err != nil {
				b.Fatal(err)
			}
			s.singleUDP, s.noGSO = loop.single, loop.noGSO
			if err := s.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
			runLoad(b, s.UDPAddr().String(), mustPack(question("web.local.", mdns.TypeA)), answered)
		})
	}
}

// BenchmarkUDPLoadForward is the same load on a name that is forwarded, to
// an upstream on loopback that answers at once.
func BenchmarkUDPLoadForward(b *testing.B) {
	up := startRawUpstream(b, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) { send(pc, from, answerFor(q)) })
	s := startServer(b, testConfig(newFakeServicesNoRecord(), up.addr))
	runLoad(b, s.UDPAddr().String(), mustPack(question("n1.example.org.", mdns.TypeA)), answered)
}
