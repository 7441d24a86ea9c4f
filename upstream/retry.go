package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// instanceError names the instance a proxied request failed on.
type instanceError struct {
	addr string
	err  error
}

func (e *instanceError) Error() string { return "instance " + e.addr + ": " + e.err.Error() }
func (e *instanceError) Unwrap() error { return e.err }

// errTryTimeout is the cause of an attempt that ran out of its try timeout.
var errTryTimeout = errors.New("no response within the try timeout")

// retryTransport sends each attempt of a request to the instance its pick
// names, keeps the instances' request counts and passive health, and
// retries on another instance when that is safe:
//
//   - the dial failed: the request provably never left, any method;
//   - the connection was reset or closed, or the try timeout passed,
//     before any response, and the method is idempotent (GET, HEAD,
//     OPTIONS, PUT, DELETE);
//
// and only while the request body can be replayed (at most maxReplayBody
// bytes of it were read), the service's retries and retry budget allow,
// and an untried, non-ejected instance is left. Once response headers
// came, nothing is retried.
type retryTransport struct {
	next http.RoundTripper
	m    *Mesh
}

// RoundTrip implements http.RoundTripper.
func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	p := pickFrom(req.Context())
	if p == nil {
		return t.next.RoundTrip(req)
	}
	var body *replayBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &replayBody{src: req.Body}
	}
	for attempt := 0; ; attempt++ {
		addr := p.endpoint().Addr
		out := attemptRequest(req, addr, body)
		resp, err := t.try(out, p)
		if err == nil {
			return resp, nil
		}
		if !t.retry(req, p, body, err, attempt) {
			return nil, &instanceError{addr: addr, err: err}
		}
	}
}

// attemptRequest is req aimed at addr, with its own view of the body. The
// transport gets a copy: RoundTrip must not change the caller's request.
func attemptRequest(req *http.Request, addr string, body *replayBody) *http.Request {
	out := new(http.Request)
	*out = *req
	u := *req.URL
	u.Host = addr
	out.URL = &u
	if body != nil {
		out.Body = body.attempt()
	}
	return out
}

// try makes one attempt on the pick's current instance, counting it as in
// flight until its response body is closed.
func (t *retryTransport) try(req *http.Request, p *pick) (*http.Response, error) {
	h := p.set.hosts[p.idx]
	h.active.Add(1)
	ctx, cancel := req.Context(), context.CancelCauseFunc(nil)
	var timer *time.Timer
	if p.policy.TryTimeout > 0 {
		ctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(p.policy.TryTimeout, func() { cancel(errTryTimeout) })
		req = req.WithContext(ctx)
	}
	resp, err := t.next.RoundTrip(req)
	if timer != nil && !timer.Stop() && err == nil {
		// The timer fired as the headers came: the body would fail.
		resp.Body.Close()
		resp, err = nil, errTryTimeout
	}
	if err != nil {
		h.active.Add(-1)
		if cancel != nil {
			if errors.Is(context.Cause(ctx), errTryTimeout) {
				err = errTryTimeout
			}
			cancel(nil)
		}
		return nil, err
	}
	t.m.pickAnswered(p, resp.StatusCode)
	resp.Body = newCountedBody(resp.Body, func() {
		h.active.Add(-1)
		if cancel != nil {
			cancel(nil)
		}
	})
	return resp, nil
}

// retry decides whether the failed attempt is tried again, and if so moves
// the pick to the next instance.
func (t *retryTransport) retry(req *http.Request, p *pick, body *replayBody, err error, attempt int) bool {
	if p.client.Err() != nil || req.Context().Err() != nil {
		return false // the app went away, or the request's own timeout passed
	}
	return t.m.retryPick(p, req.Method, body.replayable(), err, attempt)
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
	for _, target := range []error{errTryTimeout, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, io.EOF, net.ErrClosed} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// countedBody runs done once when the response body is closed. An
// upgraded connection (101) stays writable, as ReverseProxy needs.
type countedBody struct {
	io.ReadCloser
	done func()
	once sync.Once
}

func (b *countedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

type countedRWBody struct {
	*countedBody
	w io.Writer
}

func (b countedRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

func newCountedBody(rc io.ReadCloser, done func()) io.ReadCloser {
	cb := &countedBody{ReadCloser: rc, done: done}
	if rw, ok := rc.(io.ReadWriteCloser); ok {
		return countedRWBody{countedBody: cb, w: rw}
	}
	return cb
}
