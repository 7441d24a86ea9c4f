// Package h2 is the HTTP/2 front-end of upstream: it serves the app's
// prior-knowledge h2c connections with net/http's own HTTP/2 server and
// routes every request (every gRPC call) on its own through the core
// (upstream.Mesh): balancing, sticky cookies, retries and passive health
// apply per request, not per connection.
//
// Toward instances it speaks h2c, over net/http's pooled HTTP/2
// transport (one connection per instance, more when the instance's
// stream limit is reached), to services whose policy declares HTTP/2
// (meshlet-protocol=http2 or grpc), and HTTP/1.1 to the others. gRPC
// needs HTTP/2 end to end, so a gRPC call to a service not declared so is
// refused with a gRPC status that says why. Requests and answers stream
// both ways, frame by frame, trailers included; the answers meshlet makes
// itself for gRPC calls are trailers-only gRPC statuses (grpc.go).
//
// It knows nothing of the other front-ends: upstream/outbound hands it
// the connections that begin with the HTTP/2 preface, and the HTTP/1.1
// ones to services declared to speak HTTP/2.
package h2

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// Server is the HTTP/2 front-end: one http.Server for the app's h2c
// connections of every service, and the transports to instances.
type Server struct {
	mesh   *upstream.Mesh
	log    *slog.Logger
	server *http.Server
	accept *handOff
	toH2   *http.Transport // h2c, to services declared http2 or grpc
	toH1   *http.Transport // HTTP/1.1, to the others
	bufs   *frontend.BufferPool
	start  sync.Once
}

// New returns the HTTP/2 front-end of mesh; its server starts with the
// first connection Serve gets.
func New(mesh *upstream.Mesh) *Server {
	s := &Server{mesh: mesh, log: mesh.Logger(), accept: newHandOff(), bufs: frontend.NewBufferPool(32 << 10)}
	// h2c, and HTTP/1.1 for the app's requests to services declared to
	// speak HTTP/2, which the dispatcher hands here too.
	appSide := new(http.Protocols)
	appSide.SetUnencryptedHTTP2(true)
	appSide.SetHTTP1(true)
	s.server = &http.Server{
		Handler:   http.HandlerFunc(s.serveHTTP),
		Protocols: appSide,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if ac, ok := c.(*appConn); ok {
				return context.WithValue(ctx, targetKey{}, ac.target)
			}
			return ctx
		},
		IdleTimeout:    frontend.AppIdleTimeout,
		MaxHeaderBytes: frontend.MaxHeadSize,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return mesh.Dial(ctx, addr) }
	s.toH2 = newTransport(dial, true)
	s.toH1 = newTransport(dial, false)
	return s
}

// newTransport returns a pooled transport to instances, h2c when h2 is
// set, else HTTP/1.1. Compression stays the app's business.
func newTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error), h2 bool) *http.Transport {
	protocols := new(http.Protocols)
	if h2 {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	return &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        2048,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Protocols:           protocols,
		// A silent instance (its host gone) is found by a ping that goes
		// unanswered, rather than by the calls that wait on it.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 10 * time.Second},
	}
}

type targetKey struct{}

// Serve serves conn, an h2c connection of the app to t, until it is
// done; peeked are the bytes already read from it (the preface, or part
// of it), replayed first. It closes conn, also when ctx ends.
func (s *Server) Serve(ctx context.Context, conn net.Conn, peeked []byte, t *upstream.Target) {
	s.start.Do(func() {
		go func() {
			if err := s.server.Serve(s.accept); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("internal HTTP/2 server stopped", "err", err)
			}
		}()
	})
	ac := &appConn{Conn: conn, peeked: peeked, target: t, closed: make(chan struct{})}
	if !s.accept.give(ctx, ac) {
		ac.Close()
		return
	}
	stop := context.AfterFunc(ctx, func() { ac.Close() })
	defer stop()
	<-ac.closed
}

// Shutdown stops the server: each connection gets a GOAWAY, calls in
// flight run until ctx ends (see http.Server.Shutdown).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.server.Shutdown(ctx)
	s.accept.Close()
	s.toH2.CloseIdleConnections()
	s.toH1.CloseIdleConnections()
	return err
}

// Close closes every connection the server still has.
func (s *Server) Close() error { return s.server.Close() }

// handOff is the listener the server accepts from: Serve gives it the
// app's connections one by one.
type handOff struct {
	next   chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandOff() *handOff {
	return &handOff{next: make(chan net.Conn), closed: make(chan struct{})}
}

// give hands c to the server; false if the server is closed or ctx ended
// first.
func (h *handOff) give(ctx context.Context, c net.Conn) bool {
	select {
	case h.next <- c:
		return true
	case <-h.closed:
		return false
	case <-ctx.Done():
		return false
	}
}

func (h *handOff) Accept() (net.Conn, error) {
	select {
	case c := <-h.next:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	}
}

func (h *handOff) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

func (h *handOff) Addr() net.Addr { return &net.UnixAddr{Name: "meshlet-h2", Net: "meshlet"} }

// appConn is one connection of the app, as the server sees it: the bytes
// sniffed are read again first, and Close tells Serve that it is over.
type appConn struct {
	net.Conn
	peeked    []byte
	target    *upstream.Target
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *appConn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *appConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.closed) })
	return err
}
