package dns

import (
	"fmt"
	"net"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
)

// rawUpstream is a UDP resolver stand-in that hands every datagram it gets
// to handle, one at a time, with the socket to answer on.
type rawUpstream struct {
	pc   net.PacketConn
	addr string

	mu    sync.Mutex
	ports map[int]bool // source ports queries came from
	ids   []uint16     // IDs of the queries, in arrival order
}

func startRawUpstream(t testing.TB, handle func(pc net.PacketConn, from net.Addr, q *mdns.Msg)) *rawUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{pc: pc, addr: pc.LocalAddr().String(), ports: map[int]bool{}}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, maxMsgLen)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if err := q.Unpack(buf[:n]); err != nil {
				continue
			}
			u.mu.Lock()
			u.ports[from.(*net.UDPAddr).Port] = true
			u.ids = append(u.ids, q.Id)
			u.mu.Unlock()
			handle(pc, from, q)
		}
	}()
	return u
}

func (u *rawUpstream) sourcePorts() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ports)
}

func (u *rawUpstream) queryIDs() []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]uint16(nil), u.ids...)
}

// answerFor is the reply a test upstream gives: one A record whose last
// byte says which name was asked, so a client can tell answers apart.
func answerFor(q *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg).SetReply(q)
	var n int
	_, _ = fmt.Sscanf(q.Question[0].Name, "n%d.", &n)
	m.Answer = append(m.Answer, mustRR(fmt.Sprintf("%s 60 IN A 192.0.2.%d", q.Question[0].Name, n%250)))
	return m
}

func send(pc net.PacketConn, to net.Addr, m *mdns.Msg) {
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	_, _ = pc.WriteTo(b, to)
}
