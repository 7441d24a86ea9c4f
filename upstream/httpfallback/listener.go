package httpfallback

import (
	"context"
	"net"
	"sync"

	"github.com/meshlet/meshlet/upstream"
)

// connListener is a net.Listener fed by Serve, so that one http.Server
// serves the HTTP connections of every service and brings keep-alive,
// pipelining, error answers to broken requests and a draining Shutdown.
type connListener struct {
	conns     chan net.Conn // unbuffered: a conn is either accepted or handed back
	closed    chan struct{}
	closeOnce sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// hand gives c to the server and reports whether it took it.
func (l *connListener) hand(ctx context.Context, c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
	case <-ctx.Done():
	}
	return false
}

// Accept implements net.Listener.
func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *connListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr implements net.Listener.
func (l *connListener) Addr() net.Addr { return internalAddr{} }

type internalAddr struct{}

func (internalAddr) Network() string { return "meshlet" }
func (internalAddr) String() string  { return "meshlet-internal" }

// servedConn is a connection handed to the http.Server. Its Close tells
// Serve that the server (or a hijacking upgrade) is done with it.
type servedConn struct {
	net.Conn
	target    *upstream.Target
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

func (c *servedConn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		close(c.done)
	})
	return c.closeErr
}
