package upstream

import (
	"bufio"
	"context"
	"net"
	"sync"
	"syscall"
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
	bw        *bufio.Writer
	idleSince time.Time
}

// instancePool holds the idle connections to one instance address, the
// most recently used on top: it is the least likely to have been closed
// by the instance, and the others age out.
type instancePool struct {
	addr string
	mu   sync.Mutex
	idle []*upConn
}

// upPools are the forwarder's pools, one per instance address.
type upPools struct {
	dialer *net.Dialer

	mu      sync.Mutex
	pools   map[string]*instancePool
	closed  bool
	reaping bool
	stop    chan struct{}
}

func newUpPools(d *net.Dialer) *upPools {
	return &upPools{dialer: d, pools: map[string]*instancePool{}, stop: make(chan struct{})}
}

// pool returns the pool of addr, made if new.
func (u *upPools) pool(addr string) *instancePool {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := u.pools[addr]
	if p == nil {
		p = &instancePool{addr: addr}
		u.pools[addr] = p
		if !u.reaping && !u.closed {
			u.reaping = true
			go u.reap()
		}
	}
	return p
}

// get returns an idle connection, or nil. Those idle too long are closed.
func (u *upPools) get(p *instancePool) *upConn {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < idleConnTimeout {
			return c
		}
		c.c.Close()
	}
	return nil
}

// put gives back a connection whose last answer was read whole.
func (u *upPools) put(p *instancePool, c *upConn) {
	c.idleSince = time.Now()
	c.c.SetDeadline(time.Time{})
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	p.mu.Lock()
	if !closed && len(p.idle) < maxIdlePerInstance {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
}

// dial opens a new connection to addr with the mesh's dialer (so that the
// socket mark stays), until deadline (zero: the dialer's own timeout).
func (u *upPools) dial(ctx context.Context, addr string, deadline time.Time) (*upConn, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	c, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &dialError{addr: addr, err: err}
	}
	uc := &upConn{c: c, bw: bufio.NewWriterSize(c, writeBufSize)}
	uc.rd.reset(c, make([]byte, readBufSize))
	return uc, nil
}

// reap closes idle connections past their time, until close.
func (u *upPools) reap() {
	t := time.NewTicker(idleConnTimeout / 3)
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
				if len(p.idle) == 0 {
					delete(u.pools, addr) // made again when used
				}
				p.mu.Unlock()
				pools = append(pools, p)
			}
			u.mu.Unlock()
			for _, p := range pools {
				p.mu.Lock()
				keep := p.idle[:0]
				for _, c := range p.idle {
					if now.Sub(c.idleSince) >= idleConnTimeout {
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
		for _, c := range p.idle {
			c.c.Close()
		}
		p.idle = nil
		p.mu.Unlock()
	}
}

// alive reports whether an idle connection still looks open: no EOF, no
// error and no unexpected bytes are waiting on it. It costs a system call,
// so the forwarder asks only before sending a request it must not send
// twice.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = err == syscall.EAGAIN
		return true
	})
	return err == nil && ok
}
