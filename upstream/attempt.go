package upstream

// How an attempt reaches an instance (Dial) and how its failure is told
// apart: the errors the front-ends report with, the retry rule, and the
// codes of the answers the app gets.

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
)

// Codes of the X-Meshlet-Error header, for the app's logs and for tests.
const (
	ErrCodeNoInstance  = "no-healthy-instance"
	ErrCodeNoAnswer    = "no-consul-answer"
	ErrCodeStale       = "stale-instances"
	ErrCodeUnreachable = "instance-unreachable"
	ErrCodeFailed      = "instance-failed"
	ErrCodeTimeout     = "timeout"
	// ErrCodeBadRequest: a request the mesh refuses to pass on (400, 431,
	// 501).
	ErrCodeBadRequest = "bad-request"
	// ErrCodeAppClosed: the app half-closed its connection (FIN) while
	// its answer was awaited; the request to the instance was abandoned.
	ErrCodeAppClosed = "app-closed"
)

// InstanceError names the instance a proxied request failed on.
type InstanceError struct {
	Addr string
	Err  error
}

func (e *InstanceError) Error() string { return "instance " + e.Addr + ": " + e.Err.Error() }
func (e *InstanceError) Unwrap() error { return e.Err }

// ErrTryTimeout is the cause of an attempt that ran out of its try timeout.
var ErrTryTimeout = errors.New("no response within the try timeout")

// ErrRequestTimeout is the cause of an attempt cut by the request's own
// timeout (Policy.Timeout).
var ErrRequestTimeout = errors.New("the request's timeout passed")

// dialError marks an error of the dial to an instance: the request never
// reached it, so it may go to another one.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// DialFailure marks err as the failure of a dial to the instance at addr
// (as Dial's failures are): nothing reached the instance. A front-end
// whose own deadline ended a dial reports it so.
func DialFailure(addr string, err error) error { return &dialError{addr: addr, err: err} }

// Dial opens a connection to the instance address addr (as
// Endpoint.Addr) the way the mesh reaches instances: a TCP connection
// with the agent's socket mark, and over it, when addr is an instance's
// Connect sidecar (Endpoint.MTLS), the mTLS handshake with the app's
// identity (connectdial.go), within the same connect timeout. Front-ends
// make every instance connection here. A failure, the handshake's
// included, says that nothing reached the instance, so that Retry may
// send the request elsewhere, whatever its method. An mTLS connection
// hands its TCP connection out through NetConn (twice: tls.Conn's, then
// the layer under it), to be looked at, never read, while idle.
func (m *Mesh) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if w := m.destOf(addr); w != nil {
		return m.dialConnect(ctx, addr, w)
	}
	c, err := m.cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &dialError{addr: addr, err: err}
	}
	return c, nil
}

// retryable reports whether an attempt that failed with err, before any
// response, may be sent again elsewhere.
func retryable(err error, method string) bool {
	var de *dialError
	if errors.As(err, &de) {
		return true // never reached the instance
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	// The connection failed before a response: reset, closed, or timed
	// out. A reset while the body was still being written shows as a
	// write on the connection the transport has closed meanwhile.
	for _, target := range []error{ErrTryTimeout, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, io.EOF, net.ErrClosed} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// OneLine makes s fit in one line of an error answer.
func OneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// IsDialFailure reports whether err is the failure of a dial to an
// instance (see DialFailure): the request never reached it.
func IsDialFailure(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}
