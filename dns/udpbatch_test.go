package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// A burst of a few batches' worth of mixed datagrams, sent in one sendmmsg
// so that the loop reads them many at a time, gets exactly the replies
// one-at-a-time serving gives: each query answered once, with its own ID
// and rcode, forwarded ones too, and responses dropped.
func TestUDPBurstAnsweredOnceEach(t *testing.T) {
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) { send(pc, from, answerFor(q)) })
	s := startServer(t, testConfig(newFakeServices(), up.addr))
	// More than two batches, and few enough that a default receive
	// buffer (208 KiB, about 90 small datagrams) holds them all.
	const n = 2*udpBatchSize + 8
	want := map[uint16]int{} // ID → rcode expected
	var ms []ipv4.Message
	for i := range n {
		var q *mdns.Msg
		switch i % 4 {
		case 0:
			q = question("web.local.", mdns.TypeA)
			want[uint16(i)] = mdns.RcodeSuccess
		case 1:
			q = question("nosuch.local.", mdns.TypeA)
			want[uint16(i)] = mdns.RcodeNameError
		case 2:
			q = question(fmt.Sprintf("n%d.example.org.", i), mdns.TypeA)
			want[uint16(i)] = mdns.RcodeSuccess
		case 3:
			q = question("web.local.", mdns.TypeA)
			q.Response = true // noise: dropped
		}
		q.Id = uint16(i)
		ms = append(ms, ipv4.Message{Buffers: [][]byte{mustPack(q)}})
	}
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := ipv4.NewPacketConn(conn.(*net.UDPConn))
	for sent := 0; sent < len(ms); {
		k, err := pc.WriteBatch(ms[sent:], 0)
		if err != nil {
			t.Fatalf("sending the burst: %v", err)
		}
		sent += k
	}

	got := map[uint16]int{}
	buf := make([]byte, maxMsgLen)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < len(want) {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d replies: %v", len(got), len(want), err)
		}
		r := new(mdns.Msg)
		if err := r.Unpack(buf[:k]); err != nil {
			t.Fatalf("reply %x: %v", buf[:k], err)
		}
		if _, twice := got[r.Id]; twice {
			t.Fatalf("query %d answered twice", r.Id)
		}
		got[r.Id] = r.Rcode
		if r.Rcode == mdns.RcodeSuccess && len(r.Answer) != 1 {
			t.Errorf("query %d: %d answers, want 1", r.Id, len(r.Answer))
		}
	}
	for id, rcode := range want {
		if got[id] != rcode {
			t.Errorf("query %d: rcode %s, want %s", id, mdns.RcodeToString[got[id]], mdns.RcodeToString[rcode])
		}
	}
	// Nothing more: the responses in the burst stay unanswered.
	_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if k, err := conn.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("an extra datagram came back: %x (%v)", buf[:k], err)
	}
}

// The loop serves an IPv6 address, and a dual-stack [::] socket answers
// IPv4 clients (which it sees as v4-mapped addresses) too. Both loops.
func TestUDPServesIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = c.Close()
	}
	for _, tc := range []struct {
		name, listen, ask string
	}{
		{"loopback", "[::1]:0", "::1"},
		// Only loopback traffic: the wildcard is the one way to get
		// v4-mapped clients on an IPv6 socket.
		{"dual stack, IPv4 client", "[::]:0", "127.0.0.1"},
		{"dual stack, IPv6 client", "[::]:0", "::1"},
	} {
		for _, single := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/single=%v", tc.name, single), func(t *testing.T) {
				cfg := testConfig(newFakeServices(), deadAddr(t))
				cfg.Listen = tc.listen
				s, err := NewServer(cfg)
				if err != nil {
					t.Fatal(err)
				}
				s.singleUDP = single
				if err := s.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					if err := s.Shutdown(ctx); err != nil {
						t.Errorf("Shutdown: %v", err)
					}
				})
				port := s.UDPAddr().(*net.UDPAddr).Port
				addr := net.JoinHostPort(tc.ask, fmt.Sprint(port))
				for range 3 {
					r := ask(t, "udp", addr, question("web.local.", mdns.TypeA))
					if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "127.77.0.1" {
						t.Fatalf("asked %s: %v, want web's VIP", addr, r)
					}
				}
			})
		}
	}
}

// A batched writer holds its reply for the batch, and a second reply to
// the same datagram (which handle never writes) sends the first rather than
// losing it.
func TestBatchedWriterHoldsOneReply(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := &udpWriter{conn: conn, to: sink.LocalAddr().(*net.UDPAddr).AddrPort(), out: make([]byte, 0, 512), batched: true}
	first := question("web.local.", mdns.TypeA)
	first.Id = 1
	if err := w.WriteMsg(first); err != nil {
		t.Fatal(err)
	}
	if w.reply == nil || binary.BigEndian.Uint16(w.reply) != 1 {
		t.Fatalf("held %x, want the first message", w.reply)
	}
	second := mustPack(question("db.local.", mdns.TypeA))
	binary.BigEndian.PutUint16(second, 2)
	if _, err := w.Write(second); err != nil {
		t.Fatal(err)
	}
	second[0], second[1] = 0xff, 0xff // the caller reuses its buffer
	if binary.BigEndian.Uint16(w.reply) != 2 {
		t.Fatalf("held %x, want the second message, copied", w.reply)
	}
	buf := make([]byte, 512)
	_ = sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	k, err := sink.Read(buf)
	if err != nil {
		t.Fatalf("the first reply was not sent: %v", err)
	}
	if k < headerLen || binary.BigEndian.Uint16(buf) != 1 {
		t.Fatalf("sent %x, want the first message", buf[:k])
	}
}

// fakeBatchConn records what is written, refusing any GSO message as a
// kernel without UDP_SEGMENT (or a device without checksum offload) does.
type fakeBatchConn struct {
	sent []ipv4.Message
}

func (f *fakeBatchConn) ReadBatch([]ipv4.Message, int) (int, error) { return 0, net.ErrClosed }

func (f *fakeBatchConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	for i, m := range ms {
		if m.OOB != nil {
			if i == 0 {
				return 0, &net.OpError{Op: "write", Err: syscall.EIO}
			}
			return i, nil
		}
		f.sent = append(f.sent, ipv4.Message{Buffers: [][]byte{append([]byte(nil), m.Buffers[0]...)}, Addr: m.Addr})
	}
	return len(ms), nil
}

func TestReplyGroups(t *testing.T) {
	a := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1000}
	aAgain := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: 1000}
	b := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1001}
	reply := func(n int) []byte { return make([]byte, n) }
	for _, tc := range []struct {
		gso  bool
		want []int // segments per message, in order
	}{
		{gso: true, want: []int{3, 1, 1}},
		{gso: false, want: []int{1, 1, 1, 1, 1}},
	} {
		t.Run(fmt.Sprintf("gso=%v", tc.gso), func(t *testing.T) {
			r := newReplyGroups(tc.gso)
			r.add(a, reply(40))
			r.add(a, reply(41)) // another length: a message of its own
			r.add(aAgain, reply(40))
			r.add(b, reply(40)) // another client
			r.add(a, reply(40))
			var got []int
			for _, m := range r.messages() {
				got = append(got, len(m.Buffers))
				if (len(m.Buffers) > 1) != (m.OOB != nil) {
					t.Errorf("message of %d segments with control %x", len(m.Buffers), m.OOB)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("segments per message %v, want %v", got, tc.want)
			}
			if left := r.messages(); len(left) != 0 {
				t.Errorf("%d messages left after the batch was taken", len(left))
			}
		})
	}
}

// A kernel that refuses GSO costs no reply: the refused message goes again
// as single datagrams, and GSO stays off.
func TestWriteBatchFallsBackFromGSO(t *testing.T) {
	s, err := NewServer(testConfig(newFakeServices(), "127.0.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	u := newUDPServer(s, nil)
	a := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1000}
	r := newReplyGroups(true)
	r.add(a, []byte("one."))
	r.add(a, []byte("two."))
	r.add(a, []byte("three"))
	fc := &fakeBatchConn{}
	u.writeBatch(fc, r)
	var got []string
	for _, m := range fc.sent {
		got = append(got, string(m.Buffers[0]))
	}
	if fmt.Sprint(got) != "[one. two. three]" {
		t.Errorf("sent %q, want one. two. three", got)
	}
	if r.gso {
		t.Error("GSO still on after the kernel refused it")
	}
	r.add(a, []byte("four"))
	r.add(a, []byte("five"))
	if ms := r.messages(); len(ms) != 2 {
		t.Errorf("%d messages after GSO was turned off, want 2", len(ms))
	}
}
