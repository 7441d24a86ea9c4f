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
	closed bool
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

// Close closes every connection of l.
func (l *liveConn) Close() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
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
func (s *connSet) drain() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	if len(s.conns) == 0 {
		s.closeDrained()
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
