package h1

import (
	"bufio"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the forwarder's keep-alive connections to instances, as the
// net/http transport of the other path has them.
const (
	maxIdlePerInstance = 256
	idleConnTimeout    = 90 * time.Second
)

// upConn is a keep-alive connection to an instance with its buffers.
type upConn struct {
	c         net.Conn
	rd        connReader
	rs        readSlices // rd's waits
	w         upWriter   // bw writes through it
	bw        *bufio.Writer
	pk        peeker  // c's own bytes: none under TLS, whose socket carries records
	sock      *peeker // the socket under c, for the reuse check: &pk, or under TLS one of its own
	idleSince time.Time
	// deadline is the one armed on both directions by armSlice, while
	// armed; anything else that sets one clears armed.
	deadline time.Time
	armed    bool
}

// armSlice arms want, the end of a wait slice of every (or the request's
// end, when earlier), on both directions, unless the deadline armed
// already ends no later and leaves at least half a slice: a slice that
// ends early costs only a look at the app (readSlices.again), a timer
// update per request costs more. Without slices (every <= 0) the deadline
// is the request's and is always set.
func (c *upConn) armSlice(now, want time.Time, every time.Duration) {
	if every > 0 && c.armed && !c.deadline.IsZero() && !c.deadline.After(want) && c.deadline.Sub(now) >= every/2 {
		return
	}
	c.c.SetDeadline(want)
	c.deadline, c.armed = want, every > 0
}

// instancePool holds the idle connections to one instance address, the
// most recently used on top: it is the least likely to have been closed
// by the instance, and the others age out.
type instancePool struct {
	addr string
	// users counts the requests that hold the pool (pool to release): the
	// reaper keeps a pool they may put a connection back into.
	users  atomic.Int64
	mu     sync.Mutex
	idle   []*upConn
	closed bool // by upPools.close: connections put back are closed
}

// upPools are the forwarder's pools, one per instance address.
type upPools struct {
	dial func(ctx context.Context, addr string) (net.Conn, error) // the core's

	idleTimeout time.Duration // of an idle connection; the reaper runs every third of it
	bufs        sync.Pool     // *[]byte of copyBufSize, for upWriter

	mu      sync.Mutex
	pools   map[string]*instancePool
	closed  bool
	reaping bool
	stop    chan struct{}
}

func newUpPools(dial func(ctx context.Context, addr string) (net.Conn, error)) *upPools {
	u := &upPools{dial: dial, idleTimeout: idleConnTimeout, pools: map[string]*instancePool{}, stop: make(chan struct{})}
	u.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	return u
}

// pool returns the pool of addr, made if new, for one request, which
// gives it back with release.
func (u *upPools) pool(addr string) *instancePool {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := u.pools[addr]
	if p == nil {
		p = &instancePool{addr: addr, closed: u.closed}
		if !u.closed {
			u.pools[addr] = p
		}
		if !u.reaping && !u.closed {
			u.reaping = true
			go u.reap()
		}
	}
	p.users.Add(1) // under u.mu: the reaper, which holds it, sees it
	return p
}

// release ends a request's hold on p, after its connection was put back.
func (u *upPools) release(p *instancePool) { p.users.Add(-1) }

// get returns an idle connection, or nil. Those idle too long are closed.
func (u *upPools) get(p *instancePool) *upConn {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < u.idleTimeout {
			return c
		}
		c.c.Close()
	}
	return nil
}

// put gives back a connection whose last answer was read whole.
func (u *upPools) put(p *instancePool, c *upConn) {
	// Its deadline stays: nothing reads or writes it while it is idle
	// (alive looks without reading), and the next request arms its own.
	c.idleSince = time.Now()
	c.rs.app = nil
	if len(c.rd.buf) > readBufSize {
		// A large answer head grew it: an idle connection keeps no more
		// than the usual.
		c.rd.reset(c.c, make([]byte, readBufSize))
	}
	p.mu.Lock()
	if !p.closed && len(p.idle) < maxIdlePerInstance {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
}

// open opens a new connection to addr with the mesh's dialer (so that the
// socket mark stays, and a failure is known as a dial's), until deadline
// (zero: the dialer's own timeout).
func (u *upPools) open(ctx context.Context, addr string, deadline time.Time) (*upConn, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	c, err := u.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	uc := &upConn{c: c}
	uc.pk.init(c)
	uc.sock = &uc.pk
	if s := socketOf(c); s != c {
		uc.sock = new(peeker)
		uc.sock.init(s)
	}
	uc.w = upWriter{c: c, pk: &uc.pk, rd: &uc.rd, bufs: &u.bufs, armed: &uc.armed}
	uc.bw = bufio.NewWriterSize(&uc.w, writeBufSize)
	uc.rs.c, uc.rs.armed = c, &uc.armed
	uc.rd.reset(c, make([]byte, readBufSize))
	uc.rd.wait, uc.rd.limit = &uc.rs, maxRespHeadSize
	return uc, nil
}

// reap closes idle connections past their time, until close.
func (u *upPools) reap() {
	t := time.NewTicker(u.idleTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case now := <-t.C:
			u.mu.Lock()
			pools := make([]*instancePool, 0, len(u.pools))
			for addr, p := range u.pools {
				p.mu.Lock()
				if len(p.idle) == 0 && p.users.Load() == 0 {
					// Made again when used. One with requests in flight
					// stays: they put their connections back into it.
					delete(u.pools, addr)
				}
				p.mu.Unlock()
				pools = append(pools, p)
			}
			u.mu.Unlock()
			for _, p := range pools {
				p.mu.Lock()
				keep := p.idle[:0]
				for _, c := range p.idle {
					if now.Sub(c.idleSince) >= u.idleTimeout {
						c.c.Close()
					} else {
						keep = append(keep, c)
					}
				}
				clear(p.idle[len(keep):])
				p.idle = keep
				p.mu.Unlock()
			}
		}
	}
}

// close closes every idle connection and stops pooling.
func (u *upPools) close() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	close(u.stop)
	pools := u.pools
	u.pools = map[string]*instancePool{}
	u.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		p.closed = true
		for _, c := range p.idle {
			c.c.Close()
		}
		p.idle = nil
		p.mu.Unlock()
	}
}
