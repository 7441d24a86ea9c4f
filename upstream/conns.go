package upstream

import (
	"net"
	"sync"
)

// liveConn is one connection ServeConn is serving, with the connection to
// the instance once there is one: closing it ends both, so that neither
// side keeps a proxy goroutine waiting for the other.
type liveConn struct {
	mu     sync.Mutex
	conns  []net.Conn
	up     net.Conn // the forwarder's instance connection of the request in flight
	closed bool
	// idle is set while the forwarder waits for the app's next request:
	// Shutdown closes such a connection at once.
	idle     bool
	draining bool // Shutdown began: no new request starts
}

func newLiveConn(c net.Conn) *liveConn {
	return &liveConn{conns: []net.Conn{c}}
}

// attach adds c, or closes it at once if the connection is already closed.
func (l *liveConn) attach(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.conns = append(l.conns, c)
	return true
}

// setUp attaches the instance connection of the forwarder's request in
// flight, so that Close ends it too. It reports false, and closes c, when
// l is closed already.
func (l *liveConn) setUp(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.up = c
	return true
}

// detach forgets the instance connection of the request in flight and
// reports whether l was closed meanwhile: Close may then close it still,
// so it must not go back to the pool, where another request could have it.
func (l *liveConn) detach() (closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.up = nil
	return l.closed
}

// setIdle marks whether the forwarder waits for the next request. It
// reports false when Shutdown began: the connection is to end.
func (l *liveConn) setIdle(idle bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idle = idle
	return !l.draining && !l.closed
}

// isClosed reports whether l was closed (by Shutdown or ServeConn's ctx).
func (l *liveConn) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// isDraining reports whether Shutdown began, so the answer in flight is
// the connection's last.
func (l *liveConn) isDraining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.draining
}

// drain marks l as draining and reports whether it is idle, to be closed.
func (l *liveConn) drain() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.draining = true
	return l.idle
}

// Close closes every connection of l.
func (l *liveConn) Close() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	up := l.up
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if up != nil {
		up.Close()
	}
}

// connSet tracks the connections ServeConn is serving, so that Shutdown
// can wait for them and close those still open when its time is up.
type connSet struct {
	mu      sync.Mutex
	conns   map[*liveConn]struct{}
	closing bool
	drained chan struct{} // closed once closing and empty
}

func newConnSet() *connSet {
	return &connSet{conns: make(map[*liveConn]struct{}), drained: make(chan struct{})}
}

// add tracks c, unless the set is closing.
func (s *connSet) add(c *liveConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connSet) remove(c *liveConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.closing && len(s.conns) == 0 {
		s.closeDrained()
	}
}

// drain stops taking connections and returns a channel closed once the
// last one is removed.
// Connections idle between the forwarder's requests are closed at once.
func (s *connSet) drain() <-chan struct{} {
	s.mu.Lock()
	s.closing = true
	if len(s.conns) == 0 {
		s.closeDrained()
	}
	var idle []*liveConn
	for c := range s.conns {
		if c.drain() {
			idle = append(idle, c)
		}
	}
	s.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	return s.drained
}

func (s *connSet) closeDrained() {
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// closeAll closes every tracked connection.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*liveConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
