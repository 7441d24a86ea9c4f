package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// udpConnsPerUpstream is how many sockets each upstream gets. More than one
// spreads the in-flight queries over several ID spaces and receive buffers;
// each costs one port and one reader goroutine for the server's life.
const udpConnsPerUpstream = 4

// dialFunc opens a connected socket; it is the server's (marked) dialer.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// udpUpstream holds the long-lived sockets to one upstream resolver. They
// are dialed lazily, on the first queries that need them, replaced when they
// fail, and closed by close.
type udpUpstream struct {
	addr  string
	dial  dialFunc
	ctx   context.Context // the server's; dialing stops with it
	next  atomic.Uint32
	slots [udpConnsPerUpstream]atomic.Pointer[sharedUDPConn]

	mu     sync.Mutex // serialises dialing and close
	closed bool
}

func newUDPUpstream(ctx context.Context, addr string, dial dialFunc) *udpUpstream {
	return &udpUpstream{addr: addr, dial: dial, ctx: ctx}
}

// exchange sends w.query to the upstream on one of its sockets, taken in
// turn, and waits for the reply as sharedUDPConn.exchange does.
func (u *udpUpstream) exchange(w *waiter, timeout time.Duration, stop <-chan struct{}) ([]byte, error) {
	c, err := u.conn(int(u.next.Add(1) % udpConnsPerUpstream))
	if err != nil {
		return nil, fmt.Errorf("asking udp upstream %s: %w", u.addr, err)
	}
	reply, err := c.exchange(w, timeout, stop)
	if err != nil {
		return nil, fmt.Errorf("asking udp upstream %s from %s: %w", u.addr, c.conn.LocalAddr(), err)
	}
	return reply, nil
}

// conn returns the live socket of slot i, dialing one when the slot is
// empty or its socket failed.
func (u *udpUpstream) conn(i int) (*sharedUDPConn, error) {
	if c := u.slots[i].Load(); c != nil && !c.dead.Load() {
		return c, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errForwardStop
	}
	if c := u.slots[i].Load(); c != nil && !c.dead.Load() {
		return c, nil
	}
	// Dialing UDP sends nothing; it only binds and connects the socket,
	// so holding the lock meanwhile costs little.
	conn, err := u.dial(u.ctx, "udp", u.addr)
	if err != nil {
		return nil, fmt.Errorf("dialing: %w", err)
	}
	c := newSharedUDPConn(conn)
	u.slots[i].Store(c)
	return c, nil
}

// close closes every socket and fails the queries waiting on them; later
// queries fail at once.
func (u *udpUpstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for i := range u.slots {
		if c := u.slots[i].Swap(nil); c != nil {
			c.close()
		}
	}
}

// isStop reports whether err means the server is stopping, so that no
// further upstream should be tried.
func isStop(err error) bool { return errors.Is(err, errForwardStop) }
