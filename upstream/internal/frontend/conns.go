package frontend

import (
	"net"
	"sync"
)

// LiveConn is one connection the dispatcher is serving, with the connection to
// the instance once there is one: closing it ends both, so that neither
// side keeps a proxy goroutine waiting for the other.
type LiveConn struct {
	mu     sync.Mutex
	conns  []net.Conn
	up     net.Conn // the forwarder's instance connection of the request in flight
	closed bool
	// idle is set while the forwarder waits for the app's next request:
	// Shutdown closes such a connection at once.
	idle     bool
	draining bool // Shutdown began: no new request starts
}

func NewLiveConn(c net.Conn) *LiveConn {
	return &LiveConn{conns: []net.Conn{c}}
}

// Attach adds c, or closes it at once if the connection is already closed.
func (l *LiveConn) Attach(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.conns = append(l.conns, c)
	return true
}

// SetUp attaches the instance connection of the forwarder's request in
// flight, so that Close ends it too. It reports false, and closes c, when
// l is closed already.
func (l *LiveConn) SetUp(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.up = c
	return true
}

// Detach forgets the instance connection of the request in flight and
// reports whether l was closed meanwhile: Close may then close it still,
// so it must not go back to the pool, where another request could have it.
func (l *LiveConn) Detach() (closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.up = nil
	return l.closed
}

// SetIdle marks whether the forwarder waits for the next request. It
// reports false when Shutdown began: the connection is to end.
func (l *LiveConn) SetIdle(idle bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idle = idle
	return !l.draining && !l.closed
}

// IsClosed reports whether l was closed (by Shutdown or the ctx of the connection).
func (l *LiveConn) IsClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// IsDraining reports whether Shutdown began, so the answer in flight is
// the connection's last.
func (l *LiveConn) IsDraining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.draining
}

// drain marks l as draining and reports whether it is idle, to be closed.
func (l *LiveConn) drain() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.draining = true
	return l.idle
}

// Close closes every connection of l.
func (l *LiveConn) Close() {
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

// ConnSet tracks the connections the dispatcher is serving, so that Shutdown
// can wait for them and close those still open when its time is up.
type ConnSet struct {
	mu      sync.Mutex
	conns   map[*LiveConn]struct{}
	closing bool
	drained chan struct{} // closed once closing and empty
}

func NewConnSet() *ConnSet {
	return &ConnSet{conns: make(map[*LiveConn]struct{}), drained: make(chan struct{})}
}

// Add tracks c, unless the set is closing.
func (s *ConnSet) Add(c *LiveConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *ConnSet) Remove(c *LiveConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.closing && len(s.conns) == 0 {
		s.closeDrained()
	}
}

// Drain stops taking connections and returns a channel closed once the
// last one is removed.
// Connections idle between the forwarder's requests are closed at once.
func (s *ConnSet) Drain() <-chan struct{} {
	s.mu.Lock()
	s.closing = true
	if len(s.conns) == 0 {
		s.closeDrained()
	}
	var idle []*LiveConn
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

func (s *ConnSet) closeDrained() {
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// CloseAll closes every tracked connection.
func (s *ConnSet) CloseAll() {
	s.mu.Lock()
	conns := make([]*LiveConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
