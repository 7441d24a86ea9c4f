package upstream

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
)

// instanceError names the instance a proxied request failed on.
type instanceError struct {
	addr string
	err  error
}

func (e *instanceError) Error() string { return "instance " + e.addr + ": " + e.err.Error() }
func (e *instanceError) Unwrap() error { return e.err }

// retryOnDialError sends a request whose dial failed once more, to the
// next instance of the set. Only a failed dial is retried, for any
// method: the request provably never left. Everything else is left to a
// later retry policy with a budget.
type retryOnDialError struct {
	next http.RoundTripper
	log  *slog.Logger
}

// RoundTrip implements http.RoundTripper.
func (t *retryOnDialError) RoundTrip(req *http.Request) (*http.Response, error) {
	p := pickFrom(req.Context())
	if p == nil {
		return t.next.RoundTrip(req)
	}
	var body *replayableBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &replayableBody{rc: req.Body}
		req.Body = body
	}
	resp, err := t.next.RoundTrip(req)
	if err == nil {
		return resp, nil
	}
	first := &instanceError{addr: req.URL.Host, err: err}
	var de *dialError
	if !errors.As(err, &de) || req.Context().Err() != nil || (body != nil && body.read.Load()) {
		return nil, first
	}
	alt, ok := p.set.after(p.endpoint)
	if !ok {
		return nil, first
	}
	t.log.Debug("dial to instance failed, trying the next one", "service", p.target.watch.name,
		"failed", req.URL.Host, "next", alt.Addr, "err", err)
	retry := req.Clone(req.Context())
	retry.URL.Host = alt.Addr
	if body != nil {
		retry.Body = body
	}
	resp, err = t.next.RoundTrip(retry)
	if err != nil {
		return nil, &instanceError{addr: alt.Addr, err: err}
	}
	return resp, nil
}

// replayableBody lets a request body outlive a failed dial: the transport
// closes the body on every error, and the retry still needs it. It is only
// replayable while nothing was read; the ReverseProxy closes the real body
// when the handler returns.
type replayableBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *replayableBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *replayableBody) Close() error { return nil }
