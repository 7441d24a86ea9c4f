package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// dialShared opens one shared socket to addr for a test.
func dialShared(t testing.TB, addr string) *sharedUDPConn {
	t.Helper()
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newSharedUDPConn(conn)
	t.Cleanup(c.close)
	return c
}

// ask sends a query for name with clientID through c and returns the reply.
func askShared(c *sharedUDPConn, name string, clientID uint16, timeout time.Duration, stop <-chan struct{}) (*mdns.Msg, error) {
	q := question(name, mdns.TypeA)
	q.Id = clientID
	w := newWaiter()
	var err error
	if w.query, err = q.Pack(); err != nil {
		return nil, err
	}
	w.buf = make([]byte, maxMsgLen)
	b, err := c.exchange(w, timeout, stop)
	if err != nil {
		return nil, err
	}
	r := new(mdns.Msg)
	if err := r.Unpack(b); err != nil {
		return nil, fmt.Errorf("unpacking reply: %w", err)
	}
	return r, nil
}

func wantAnswer(r *mdns.Msg, n int) error {
	if r == nil || len(r.Answer) != 1 {
		return fmt.Errorf("reply %v, want one answer", r)
	}
	a, ok := r.Answer[0].(*mdns.A)
	want := fmt.Sprintf("n%d.example.org.", n)
	if !ok || a.Hdr.Name != want || int(a.A.To4()[3]) != n%250 {
		return fmt.Errorf("answer %v, want the one for %s", r.Answer[0], want)
	}
	return nil
}

// Many queries in flight on one socket, answered in reverse order, each
// get the answer to their own question.
func TestSharedConnDemultiplexes(t *testing.T) {
	const n = 200
	var (
		mu      sync.Mutex
		pending []*mdns.Msg
		from    net.Addr
	)
	up := startRawUpstream(t, func(pc net.PacketConn, addr net.Addr, q *mdns.Msg) {
		mu.Lock()
		defer mu.Unlock()
		pending = append(pending, q)
		from = addr
		if len(pending) == n {
			for i := len(pending) - 1; i >= 0; i-- {
				send(pc, from, answerFor(pending[i]))
			}
		}
	})
	c := dialShared(t, up.addr)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Every client uses the same ID, as independent stubs may.
			r, err := askShared(c, fmt.Sprintf("n%d.example.org.", i), 4242, 5*time.Second, nil)
			if err == nil {
				err = wantAnswer(r, i)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ids := map[uint16]bool{}
	for _, id := range up.queryIDs() {
		ids[id] = true
	}
	if len(ids) != n {
		t.Errorf("upstream saw %d distinct IDs for %d concurrent queries, want all distinct", len(ids), n)
	}
	if c.inflight() != 0 {
		t.Errorf("%d queries still registered after all were answered", c.inflight())
	}
}

// Replies that are not for the query are dropped and the query keeps
// waiting for its own.
func TestSharedConnDropsWrongReplies(t *testing.T) {
	tests := []struct {
		name   string
		before func(q *mdns.Msg) *mdns.Msg // sent before the right reply
	}{
		{"other id", func(q *mdns.Msg) *mdns.Msg {
			m := answerFor(q)
			m.Id = q.Id + 1
			m.Rcode = mdns.RcodeRefused
			return m
		}},
		{"other name", func(q *mdns.Msg) *mdns.Msg {
			m := answerFor(q)
			m.Question[0].Name = "evil.example.org."
			m.Rcode = mdns.RcodeRefused
			return m
		}},
		{"other type", func(q *mdns.Msg) *mdns.Msg {
			m := answerFor(q)
			m.Question[0].Qtype = mdns.TypeAAAA
			m.Rcode = mdns.RcodeRefused
			return m
		}},
		{"no question", func(q *mdns.Msg) *mdns.Msg {
			m := answerFor(q)
			m.Question = nil
			m.Rcode = mdns.RcodeRefused
			return m
		}},
		{"query not reply", func(q *mdns.Msg) *mdns.Msg {
			m := q.Copy()
			m.Rcode = mdns.RcodeRefused
			return m
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) {
				send(pc, from, tc.before(q))
				time.Sleep(20 * time.Millisecond) // let the reader take the stray first
				send(pc, from, answerFor(q))
			})
			c := dialShared(t, up.addr)
			r, err := askShared(c, "n7.example.org.", 1, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != mdns.RcodeSuccess {
				t.Fatalf("rcode %s: took the stray reply", mdns.RcodeToString[r.Rcode])
			}
			if err := wantAnswer(r, 7); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Resolvers may echo the name in another case (0x20 mixing); that is still
// the answer to the question.
func TestSharedConnAcceptsNameInOtherCase(t *testing.T) {
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) {
		m := answerFor(q)
		m.Question[0].Name = strings.ToUpper(q.Question[0].Name)
		send(pc, from, m)
	})
	c := dialShared(t, up.addr)
	r, err := askShared(c, "n3.example.org.", 1, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := wantAnswer(r, 3); err != nil {
		t.Fatal(err)
	}
}

// A query that times out gives up its ID; its late reply is dropped and does
// not reach the next query on the socket, even one for the same name.
func TestSharedConnTimeoutAndLateReply(t *testing.T) {
	var mu sync.Mutex
	var first *mdns.Msg
	var firstFrom net.Addr
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first, firstFrom = q, from // answered only after the second query
			return
		}
		late := answerFor(first)
		late.Rcode = mdns.RcodeRefused
		send(pc, firstFrom, late)
		time.Sleep(20 * time.Millisecond)
		send(pc, from, answerFor(q))
	})
	c := dialShared(t, up.addr)
	start := time.Now()
	_, err := askShared(c, "n1.example.org.", 1, 150*time.Millisecond, nil)
	if !errors.Is(err, errTimeout) {
		t.Fatalf("error %v, want a timeout", err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 2*time.Second {
		t.Errorf("timed out after %s, want about 150ms", took)
	}
	if c.inflight() != 0 {
		t.Errorf("%d queries registered after the timeout", c.inflight())
	}
	r, err := askShared(c, "n1.example.org.", 1, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != mdns.RcodeSuccess || wantAnswer(r, 1) != nil {
		t.Fatalf("reply %v, want the second query's own answer, not the late one", r)
	}
}

// Closing stop or the socket ends queries waiting on an upstream that never
// answers, at once.
func TestSharedConnStopAndClose(t *testing.T) {
	up := startRawUpstream(t, func(net.PacketConn, net.Addr, *mdns.Msg) {})
	for _, how := range []string{"stop", "close"} {
		t.Run(how, func(t *testing.T) {
			c := dialShared(t, up.addr)
			stop := make(chan struct{})
			const n = 20
			errs := make(chan error, n)
			for i := range n {
				go func() {
					_, err := askShared(c, fmt.Sprintf("n%d.example.org.", i), 1, time.Minute, stop)
					errs <- err
				}()
			}
			waitFor(t, func() bool { return c.inflight() == n })
			start := time.Now()
			if how == "stop" {
				close(stop)
			} else {
				c.close()
			}
			for range n {
				select {
				case err := <-errs:
					if !errors.Is(err, errForwardStop) {
						t.Errorf("error %v, want %v", err, errForwardStop)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("a query still waits 5s after " + how)
				}
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("queries ended %s after %s", took, how)
			}
			if how == "close" {
				if _, err := askShared(c, "n1.example.org.", 1, time.Second, nil); !errors.Is(err, errForwardStop) {
					t.Errorf("query on a closed socket: %v, want %v", err, errForwardStop)
				}
			}
		})
	}
}

// An upstream port with nothing behind it fails the query quickly (ICMP
// port unreachable), without waiting for the timeout, and the socket stays
// usable once something listens there.
func TestSharedConnRefused(t *testing.T) {
	c := dialShared(t, deadAddr(t))
	start := time.Now()
	_, err := askShared(c, "n1.example.org.", 1, 5*time.Second, nil)
	if err == nil {
		t.Fatal("a query to a dead port succeeded")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("failed after %s (%v), want well before the 5s timeout", took, err)
	}
	if c.dead.Load() {
		t.Error("socket marked dead after a refusal")
	}
}

// A failed socket is replaced by a new one on the next query.
func TestUDPUpstreamReplacesFailedSocket(t *testing.T) {
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) { send(pc, from, answerFor(q)) })
	var d net.Dialer
	u := newUDPUpstream(context.Background(), up.addr, d.DialContext)
	t.Cleanup(u.close)
	askUp := func(n int) error {
		q := question(fmt.Sprintf("n%d.example.org.", n), mdns.TypeA)
		w := newWaiter()
		w.query, _ = q.Pack()
		w.buf = make([]byte, maxMsgLen)
		b, err := u.exchange(w, 2*time.Second, nil)
		if err != nil {
			return err
		}
		r := new(mdns.Msg)
		if err := r.Unpack(b); err != nil {
			return err
		}
		return wantAnswer(r, n)
	}
	for i := range 2 * udpConnsPerUpstream {
		if err := askUp(i); err != nil {
			t.Fatal(err)
		}
	}
	// Break every socket under the upstream's feet, as a failing read does.
	for i := range u.slots {
		_ = u.slots[i].Load().conn.Close()
	}
	waitFor(t, func() bool {
		for i := range u.slots {
			if !u.slots[i].Load().dead.Load() {
				return false
			}
		}
		return true
	})
	for i := range 2 * udpConnsPerUpstream {
		if err := askUp(100 + i); err != nil {
			t.Fatalf("after the sockets failed: %v", err)
		}
	}
	if got, want := up.sourcePorts(), 2*udpConnsPerUpstream; got != want {
		t.Errorf("upstream saw %d source ports, want %d (the first sockets, then their replacements)", got, want)
	}
}

// Through the whole server: many clients forwarding at once use only the
// upstream's few long-lived sockets, and each client gets its own answer
// under its own ID.
func TestForwardUsesFewLongLivedSockets(t *testing.T) {
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) { send(pc, from, answerFor(q)) })
	s := startServer(t, testConfig(newFakeServices(), up.addr))
	const clients, each = 8, 50
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				n := c*each + i
				q := question(fmt.Sprintf("n%d.example.org.", n), mdns.TypeA)
				q.Id = uint16(n)
				r, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(q, s.UDPAddr().String())
				if err == nil {
					err = wantAnswer(r, n)
				}
				if err == nil && r.Id != q.Id {
					err = fmt.Errorf("reply ID %d, want the client's %d", r.Id, q.Id)
				}
				if err != nil {
					errs[c] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := up.sourcePorts(); got < 1 || got > udpConnsPerUpstream {
		t.Errorf("%d forwarded queries came from %d source ports, want at most %d", clients*each, got, udpConnsPerUpstream)
	}
}

// The forwarded reply is the upstream's, byte for byte, but for the ID.
func TestForwardReplyBytesUnchanged(t *testing.T) {
	var mu sync.Mutex
	var sent []byte
	up := startRawUpstream(t, func(pc net.PacketConn, from net.Addr, q *mdns.Msg) {
		m := answerFor(q)
		m.Compress = true
		m.Ns = append(m.Ns, mustRR("example.org. 60 IN NS ns.example.org."))
		b, _ := m.Pack()
		mu.Lock()
		sent = append([]byte(nil), b...)
		mu.Unlock()
		_, _ = pc.WriteTo(b, from)
	})
	s := startServer(t, testConfig(newFakeServices(), up.addr))
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := question("n5.example.org.", mdns.TypeA)
	q.Id = 0xBEEF
	b, _ := q.Pack()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2048)
	n, err := conn.Read(got)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	want := append([]byte(nil), sent...)
	mu.Unlock()
	binary.BigEndian.PutUint16(want, 0xBEEF)
	if string(got[:n]) != string(want) {
		t.Errorf("client got\n%x\nwant the upstream's bytes with the client's ID\n%x", got[:n], want)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
