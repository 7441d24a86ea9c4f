package upstream

// How Mesh.Dial reaches an instance's Connect sidecar: a TCP connection
// and the mTLS handshake, both within the connect timeout, with the
// app's identity; and the connection it returns, which the mesh can
// close when an intention denies the service (intentions.go).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshlet/meshlet/certs"
)

// HandshakeError is the failure of the mTLS handshake with an instance's
// sidecar: nothing reached the app behind it, so it is a dial's failure.
type HandshakeError struct {
	Reason string // short, for logs and the app's answer: "wrong server identity", ...
	Err    error
}

func (e *HandshakeError) Error() string {
	return "mTLS handshake failed: " + e.Reason + ": " + e.Err.Error()
}
func (e *HandshakeError) Unwrap() error { return e.Err }

// dialConnect dials the sidecar at addr of an instance of w's service and
// makes the mTLS handshake, within the dialer's timeout (the connect
// timeout) and ctx.
func (m *Mesh) dialConnect(ctx context.Context, addr string, w *serviceWatch) (net.Conn, error) {
	if d := w.connect.denied.Load(); d != nil {
		return nil, &dialError{addr: addr, err: d}
	}
	conf := w.clientTLS(m)
	if conf == nil {
		return nil, &dialError{addr: addr, err: errors.New("mTLS: the sidecar has no identity to connect with")}
	}
	start := time.Now()
	raw, err := m.cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &dialError{addr: addr, err: err}
	}
	if t := m.cfg.Dialer.Timeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(t))
		defer cancel()
	}
	out := &pendingWriter{Conn: raw}
	tc := tls.Client(out, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		m.mtls.failed.Add(1)
		herr := &HandshakeError{Reason: handshakeReason(err), Err: err}
		if n, ok := w.connect.logs.allow(time.Now()); ok {
			m.log.Warn("mTLS handshake with an instance failed; nothing was sent to it", "service", w.name,
				"instance", addr, "reason", herr.Reason, "err", OneLine(err.Error()), "suppressed", n)
		}
		return nil, &dialError{addr: addr, err: herr}
	}
	m.mtls.handshakes.Add(1)
	if tc.ConnectionState().DidResume {
		m.mtls.resumed.Add(1)
	}
	c := &connectConn{Conn: tc, out: out, set: &w.connect.conns}
	w.connect.conns.add(c)
	// A deny decided meanwhile closed the connections it saw, and
	// perhaps not this one.
	if d := w.connect.denied.Load(); d != nil {
		c.Close()
		return nil, &dialError{addr: addr, err: d}
	}
	return c, nil
}

// clientTLS is the client config toward the service's sidecars, made once
// so that its session cache makes later handshakes resumptions.
func (w *serviceWatch) clientTLS(m *Mesh) *tls.Config {
	w.connect.tlsOnce.Do(func() {
		if m.cfg.ClientTLS != nil {
			w.connect.tls = m.cfg.ClientTLS.ClientConfig(certs.Target{Service: w.name})
		}
	})
	return w.connect.tls
}

// handshakeReason names why a client handshake failed, in words a user
// can act on.
func handshakeReason(err error) string {
	var (
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		alert   tls.AlertError
		header  tls.RecordHeaderError
		ne      net.Error
	)
	switch {
	case errors.As(err, &unknown):
		return "server certificate from an unknown CA"
	case errors.As(err, &invalid):
		return "invalid server certificate (" + invalid.Error() + ")"
	case strings.Contains(err.Error(), "want service"):
		// certs' VerifyConnection: "server is <id>, want service <id>".
		return "wrong server identity"
	case errors.Is(err, certs.ErrNotReady):
		return "no CA roots or leaf certificate from consul yet"
	case errors.As(err, &alert), strings.Contains(err.Error(), "remote error"):
		return "refused by the server"
	case errors.As(err, &header):
		return "the server does not speak TLS"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return "connection closed by the server"
	}
	return "failed"
}

// connectConn is an mTLS connection to a sidecar.
type connectConn struct {
	*tls.Conn
	out  *pendingWriter // the TCP connection under it
	set  *connSet
	once sync.Once
}

// Write sends p. A write whose deadline passes fails as on a plain
// connection, and may be made again: the encrypted bytes it had not sent
// wait in out, which sends them first (see pendingWriter).
func (c *connectConn) Write(p []byte) (int, error) {
	if err := c.out.flush(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		return n, err
	}
	return n, c.out.flush()
}

// CloseWrite ends the writing side: a close_notify for TLS peers, and a
// FIN for those that only look at TCP.
func (c *connectConn) CloseWrite() error {
	c.out.flush()
	err := c.Conn.CloseWrite()
	if cw, ok := c.out.Conn.(interface{ CloseWrite() error }); ok {
		if err2 := cw.CloseWrite(); err == nil {
			err = err2
		}
	}
	return err
}

func (c *connectConn) Close() error {
	c.once.Do(func() { c.set.remove(c) })
	return c.Conn.Close()
}

// kill closes the connection at once, without a close_notify that could
// wait on a peer that does not read.
func (c *connectConn) kill() {
	c.once.Do(func() { c.set.remove(c) })
	c.out.Conn.Close()
}

// pendingWriter is the TCP connection under a connectConn. crypto/tls
// takes any error of a write, a deadline included, as the end of the
// connection, whose state is then lost. The front-ends write in slices
// of a deadline and write again after one passes (h1's upWriter): so a
// write that times out keeps what it did not send, reports success to
// TLS, and the connectConn's Write reports the timeout instead; the next
// write sends the rest first.
type pendingWriter struct {
	net.Conn
	mu      sync.Mutex
	pending []byte
}

// NetConn is the TCP connection. With tls.Conn's NetConn, which returns
// this writer, it lets a front-end look at the socket of an idle pooled
// connection (h1's reuse check), where the sidecar's close_notify, FIN or
// reset shows; never to read it: its bytes are TLS records.
func (w *pendingWriter) NetConn() net.Conn { return w.Conn }

func (w *pendingWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.pending) > 0 {
		w.pending = append(w.pending, b...)
		if err := w.flushLocked(); err != nil && !isTimeout(err) {
			return 0, err
		}
		return len(b), nil
	}
	n, err := w.Conn.Write(b)
	if err != nil && isTimeout(err) {
		w.pending = append(w.pending, b[n:]...)
		return len(b), nil
	}
	return n, err
}

// flush sends what earlier writes left, within the write deadline.
func (w *pendingWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *pendingWriter) flushLocked() error {
	if len(w.pending) == 0 {
		return nil
	}
	n, err := w.Conn.Write(w.pending)
	w.pending = w.pending[n:]
	if len(w.pending) == 0 {
		w.pending = nil
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connSet holds a service's open mTLS connections, to close them when an
// intention denies the service.
type connSet struct {
	mu    sync.Mutex
	conns map[*connectConn]struct{}
}

func (s *connSet) add(c *connectConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[*connectConn]struct{}{}
	}
	s.conns[c] = struct{}{}
}

func (s *connSet) remove(c *connectConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// len is how many connections are open.
func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// closeAll closes every open connection and returns how many it closed.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	all := make([]*connectConn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		c.kill()
	}
	return len(all)
}

// DeniedError is the refusal of a call that a Consul intention denies.
type DeniedError struct {
	Service   string // the destination
	Source    string // the app's service
	Intention string // as Consul writes it: "web-client => web (deny)"
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("consul intention %q denies calls from %q to service %q", e.Intention, e.Source, e.Service)
}
