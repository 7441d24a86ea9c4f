package httpfallback

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/upstream"
)

// retryTransport sends each attempt of a request to the instance its pick
// names, keeps the instances' request counts and passive health, and
// retries on another instance when the core says that is safe
// (upstream.Mesh.Retry), and only while the request body can be replayed
// (at most maxReplayBody bytes of it were read). Once response headers
// came, nothing is retried.
type retryTransport struct {
	next http.RoundTripper
	m    *upstream.Mesh
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
		addr := p.Endpoint().Addr
		out := attemptRequest(req, addr, body)
		resp, err := t.try(out, p)
		if err == nil {
			return resp, nil
		}
		if !t.retry(req, p, body, err, attempt) {
			return nil, &upstream.InstanceError{Addr: addr, Err: err}
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
	h := p.InFlight()
	h.Add(1)
	ctx, cancel := req.Context(), context.CancelCauseFunc(nil)
	var timer *time.Timer
	if tryTimeout := p.Policy().TryTimeout; tryTimeout > 0 {
		ctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(tryTimeout, func() { cancel(upstream.ErrTryTimeout) })
		req = req.WithContext(ctx)
	}
	// Whether the attempt got a connection: a timeout before it did is a
	// connect timeout, which ejects the instance (unreachable.go), and the
	// request never left. The transport dials apart from the request, so
	// its error alone does not say so.
	var gotConn atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	}))
	resp, err := t.next.RoundTrip(req)
	if timer != nil && !timer.Stop() && err == nil {
		// The timer fired as the headers came: the body would fail.
		resp.Body.Close()
		resp, err = nil, upstream.ErrTryTimeout
	}
	if err != nil {
		h.Add(-1)
		if cancel != nil {
			if errors.Is(context.Cause(ctx), upstream.ErrTryTimeout) {
				err = upstream.ErrTryTimeout
			}
			cancel(nil)
		}
		if !gotConn.Load() && !upstream.IsDialFailure(err) &&
			(errors.Is(err, upstream.ErrTryTimeout) || errors.Is(req.Context().Err(), context.DeadlineExceeded)) {
			err = upstream.DialFailure(p.Endpoint().Addr, err)
		}
		return nil, err
	}
	t.m.Answered(&p.Pick, resp.StatusCode)
	resp.Body = newCountedBody(resp.Body, func() {
		h.Add(-1)
		if cancel != nil {
			cancel(nil)
		}
	})
	return resp, nil
}

// retry decides whether the failed attempt is tried again, and if so moves
// the pick to the next instance.
func (t *retryTransport) retry(req *http.Request, p *pick, body *replayBody, err error, attempt int) bool {
	if p.client.Err() != nil {
		return false // the app went away
	}
	if req.Context().Err() != nil {
		// The request's own timeout passed: no failure of the instance,
		// unless it cut a connect short.
		if upstream.IsDialFailure(err) {
			t.m.Failed(&p.Pick, err)
		}
		return false
	}
	return t.m.Retry(&p.Pick, req.Method, body.replayable(), err, attempt)
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
