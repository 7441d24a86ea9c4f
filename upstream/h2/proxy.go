package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// ErrCodeNotHTTP2 is the X-Meshlet-Error code of a gRPC call to a service
// whose instances are not declared to speak HTTP/2.
const ErrCodeNotHTTP2 = "service-not-http2"

// call is one request of the app on its way.
type call struct {
	w    http.ResponseWriter
	r    *http.Request
	grpc bool
	pick upstream.Pick
	out  upstream.Outcome
	body *sentBody // nil without a request body
}

// serveHTTP routes one request of the app and relays its answer.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	t, _ := r.Context().Value(targetKey{}).(*upstream.Target)
	if t == nil {
		http.Error(w, "meshlet: request without a service", http.StatusInternalServerError)
		return
	}
	c := &call{w: w, r: r, grpc: isGRPC(r.Header), out: upstream.Outcome{Start: time.Now(), Method: r.Method}}
	if s.mesh.AccessLogging() {
		c.out.RequestID = upstream.RequestID(r.Header)
	}
	if r.Body != nil && r.Body != http.NoBody {
		c.body = newSentBody(r.Body)
	}
	defer func() {
		if c.body != nil {
			c.out.BytesIn = c.body.total()
		}
		s.mesh.Done(t, &c.pick, &c.out)
	}()
	if r.Header.Get("Upgrade") != "" {
		s.answer(c, http.StatusNotImplemented, upstream.ErrCodeBadRequest,
			"meshlet: bad request: an Upgrade (WebSocket) is not passed to a service declared to speak HTTP/2")
		return
	}
	if msg, ok := refused(r); !ok {
		s.answer(c, http.StatusBadRequest, upstream.ErrCodeBadRequest, msg)
		return
	}
	code, msg, ok := s.mesh.Choose(r.Context(), t, &c.pick, func(name string, found func(upstream.StickyID) bool) {
		upstream.StickyCookies(r.Header, name, found)
	})
	if !ok {
		s.answer(c, upstream.ChooseStatus(code), code, msg)
		return
	}
	policy := c.pick.Policy()
	tr := s.toH1
	if policy.SpeaksHTTP2() {
		tr = s.toH2
	} else if c.grpc {
		s.answer(c, http.StatusNotImplemented, ErrCodeNotHTTP2, fmt.Sprintf(
			"meshlet: gRPC needs HTTP/2 to the instances, and service %q is not declared to speak it (service meta meshlet-protocol=grpc or http2)", t.Service()))
		return
	}
	ctx := r.Context()
	timeout := policy.Timeout
	if d, ok := grpcTimeout(r.Header); ok && c.grpc && (timeout == 0 || d < timeout) {
		timeout = d
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	resp, err := s.send(ctx, c, tr)
	if err != nil {
		if c.grpc && timeout > 0 && timeout != policy.Timeout && ctx.Err() != nil && r.Context().Err() == nil {
			// The call's own deadline passed: the app's business, not
			// the instance's failure.
			s.answer(c, http.StatusGatewayTimeout, upstream.ErrCodeTimeout, fmt.Sprintf(
				"meshlet: service %q did not answer within the call's grpc-timeout of %v (%d tries)", t.Service(), timeout, c.pick.Tries()))
			return
		}
		s.failed(ctx, c, err)
		return
	}
	s.relay(ctx, c, resp)
}

// refused tells why the mesh does not pass a request on, if it does not.
func refused(r *http.Request) (string, bool) {
	if r.Method == http.MethodConnect {
		return "meshlet: bad request: CONNECT is not proxied over HTTP/2", false
	}
	for name := range r.Header {
		// An instance behind a CGI-style server could read such a name as
		// a framing header of an HTTP/1.1 request (frontend.FramingLike).
		if name != "Content-Length" && frontend.FramingLike(name) {
			return upstream.OneLine(fmt.Sprintf("meshlet: bad request: header %q could be read as Content-Length or Transfer-Encoding by an instance", name[:min(len(name), 64)])), false
		}
	}
	return "", true
}

// send makes the attempts of a request until one gets an answer head, or
// the core says not to try again.
func (s *Server) send(ctx context.Context, c *call, tr http.RoundTripper) (*http.Response, error) {
	base := s.outRequest(c)
	for attempt := 0; ; attempt++ {
		addr := c.pick.Endpoint().Addr
		resp, err := s.try(ctx, c, base, tr)
		if err == nil {
			return resp, nil
		}
		err = &upstream.InstanceError{Addr: addr, Err: err}
		switch {
		case c.r.Context().Err() != nil:
			return nil, err // the app went away
		case ctx.Err() != nil:
			// The request's own timeout passed: no failure of the
			// instance, unless it cut a connect short.
			if upstream.IsDialFailure(err) {
				s.mesh.Failed(&c.pick, err)
			}
			return nil, err
		}
		replayable := c.body == nil || c.body.replayable()
		if !s.mesh.Retry(&c.pick, c.r.Method, replayable, err, attempt) {
			return nil, err
		}
	}
}

// outRequest is the request as instances get it, but for its instance.
func (s *Server) outRequest(c *call) *http.Request {
	in := c.r
	out := in.Clone(in.Context())
	// The server fills the app's trailers into in.Trailer once the body
	// has been read; the transport sends them from there then.
	out.Trailer = in.Trailer
	out.RequestURI = ""
	// An HTTP/1.1 request's hop-by-hop headers stay on its hop (HTTP/2
	// has none; "TE: trailers" is the one it keeps).
	for k := range out.Header {
		if k != "Te" && hopByHop(k, in.Header) {
			delete(out.Header, k)
		}
	}
	if out.Header.Get("Te") != "" && !httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers") {
		delete(out.Header, "Te")
	} else if out.Header.Get("Te") != "" {
		out.Header.Set("Te", "trailers")
	}
	out.URL.Scheme = "http"
	host := in.Host
	if host == "" {
		host = c.pick.Target().Host()
	}
	out.Host = host
	// The app may itself be a proxy: keep the chain it sends and add it.
	chain := in.Header["X-Forwarded-For"]
	if ip := s.mesh.ClientIP(in.RemoteAddr); ip != "" {
		chain = append(chain[:len(chain):len(chain)], ip)
	}
	if len(chain) > 0 {
		out.Header.Set("X-Forwarded-For", strings.Join(chain, ", "))
	}
	out.Header.Set("X-Forwarded-Host", host)
	out.Header.Set("X-Forwarded-Proto", "http")
	if c.body == nil {
		out.Body = http.NoBody
	} else {
		out.GetBody = c.body.again
	}
	return out
}

// try makes one attempt on the pick's current instance; the attempt
// counts as in flight until the answer's body is closed.
func (s *Server) try(ctx context.Context, c *call, base *http.Request, tr http.RoundTripper) (*http.Response, error) {
	p := &c.pick
	addr := p.Endpoint().Addr
	inFlight := p.InFlight()
	inFlight.Add(1)
	tryCtx, cancel := context.WithCancelCause(ctx)
	var timer *time.Timer
	if d := p.Policy().TryTimeout; d > 0 {
		timer = time.AfterFunc(d, func() { cancel(upstream.ErrTryTimeout) })
	}
	// Whether the attempt got a connection, and whether its request left:
	// the transport dials apart from the request, so its error alone does
	// not tell a connect that timed out, or a request that never reached
	// the instance.
	var gotConn, wrote atomic.Bool
	tryCtx = httptrace.WithClientTrace(tryCtx, &httptrace.ClientTrace{
		GotConn:      func(httptrace.GotConnInfo) { gotConn.Store(true) },
		WroteHeaders: func() { wrote.Store(true) },
	})
	out := base.WithContext(tryCtx)
	u := *base.URL
	u.Host = addr
	out.URL = &u
	if c.body != nil {
		out.Body = c.body.attempt()
	}
	resp, err := tr.RoundTrip(out)
	if timer != nil && !timer.Stop() && err == nil {
		resp.Body.Close() // the timer fired as the head came: the body would fail
		resp, err = nil, upstream.ErrTryTimeout
	}
	if err != nil {
		inFlight.Add(-1)
		if errors.Is(context.Cause(tryCtx), upstream.ErrTryTimeout) {
			err = upstream.ErrTryTimeout
		}
		cancel(nil)
		switch {
		case upstream.IsDialFailure(err):
		case notReached(err, gotConn.Load(), wrote.Load(), ctx):
			err = upstream.DialFailure(addr, err)
		case connLost(err):
			// The core's retry rule calls a connection that closed before
			// the answer io.EOF: an idempotent request goes elsewhere.
			err = fmt.Errorf("%w (the connection closed before the answer: %w)", err, io.EOF)
		}
		return nil, err
	}
	s.mesh.Answered(p, resp.StatusCode)
	resp.Body = &answerBody{ReadCloser: resp.Body, done: func() {
		inFlight.Add(-1)
		cancel(nil)
	}}
	return resp, nil
}

// notReached reports whether a failed attempt surely never reached the
// instance's application, so that it may go to another instance whatever
// its method: its connect timed out, its request head never left, or the
// instance refused the stream or announced, by GOAWAY, that it would not
// process it (the transport retries these itself while the body can be
// sent again; what is left comes here).
func notReached(err error, gotConn, wrote bool, ctx context.Context) bool {
	if !gotConn && (errors.Is(err, upstream.ErrTryTimeout) || errors.Is(ctx.Err(), context.DeadlineExceeded)) {
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	if !wrote {
		return true
	}
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	return strings.Contains(err.Error(), "graceful shutdown GOAWAY")
}

// connLost reports whether err is how the HTTP/2 transport tells that
// the connection of a request died before its answer: it ended (as
// io.ErrUnexpectedEOF) or was closed under the request.
func connLost(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "http2: client connection force closed") ||
		strings.Contains(err.Error(), "http2: client connection lost")
}

// answerBody runs done once when the answer's body is closed.
type answerBody struct {
	io.ReadCloser
	done func()
	once sync.Once
}

func (b *answerBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// failed answers a request whose attempts all failed.
func (s *Server) failed(ctx context.Context, c *call, err error) {
	if c.r.Context().Err() != nil {
		s.log.Debug("request canceled by the app", "service", c.pick.Target().Service(),
			"instance", upstream.FailedAddr(&c.pick, err), "err", err)
		c.out.Code = upstream.ErrCodeAppClosed
		return
	}
	status, code, msg := s.mesh.FailureAnswer(&c.pick, err, ctx.Err() != nil)
	s.answer(c, status, code, msg)
}

// answer is an answer the mesh makes itself: a gRPC status for a call,
// else a one-line text.
func (s *Server) answer(c *call, status int, code, msg string) {
	c.out.Code = code
	if c.grpc {
		c.out.Status = http.StatusOK
		writeGRPCStatus(c.w, grpcCodeOf(status), msg, code)
		return
	}
	c.out.Status = status
	h := c.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Meshlet-Error", code)
	c.w.WriteHeader(status)
	io.WriteString(c.w, msg+"\n")
}

// relay passes an instance's answer to the app as it comes: the head,
// each piece of the body flushed as read (streams stay streams), then
// the trailers. An answer that ends with its head (a gRPC trailers-only
// status) stays one HEADERS frame.
func (s *Server) relay(ctx context.Context, c *call, resp *http.Response) {
	defer resp.Body.Close()
	h := c.w.Header()
	for k, vv := range resp.Header {
		if !hopByHop(k, resp.Header) {
			h[k] = vv
		}
	}
	if v, ok := c.pick.PinCookie(); ok && !upstream.SetsCookie(resp.Header, c.pick.Policy().CookieName) {
		h.Add("Set-Cookie", v)
	}
	c.out.Status = resp.StatusCode
	c.w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(c.w)
	if resp.ContentLength != 0 {
		rc.Flush() // else the head may end the stream: a trailers-only answer
	}
	buf := s.bufs.Get()
	defer s.bufs.Put(buf)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := c.w.Write(buf[:n]); werr != nil {
				c.out.Code = upstream.ErrCodeAppClosed
				return // the app went away; closing the body resets the instance's stream
			}
			c.out.BytesOut += int64(n)
			rc.Flush()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			s.cutShort(ctx, c, err)
			return
		}
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
}

// cutShort ends an answer whose instance failed after its head: a gRPC
// call gets an UNAVAILABLE status in trailers, anything else a reset
// stream, so that the app never takes it for a whole answer.
func (s *Server) cutShort(ctx context.Context, c *call, err error) {
	c.out.CutShort = true
	if c.r.Context().Err() != nil {
		c.out.Code = upstream.ErrCodeAppClosed
		return
	}
	addr, service := c.pick.Endpoint().Addr, c.pick.Target().Service()
	status, msg := grpcUnavailable, fmt.Sprintf("meshlet: instance %s of service %q failed during the call: %v", addr, service, err)
	if ctx.Err() != nil {
		c.out.Code = upstream.ErrCodeTimeout
		status, msg = grpcDeadlineExceeded, fmt.Sprintf("meshlet: service %q did not finish within the call's timeout", service)
	} else {
		c.out.Code = upstream.ErrCodeFailed
		s.mesh.Failed(&c.pick, err)
		s.log.Warn("instance failed during its answer", "service", service, "instance", addr, "err", err)
	}
	if !c.grpc {
		panic(http.ErrAbortHandler)
	}
	h := c.w.Header()
	h.Set(http.TrailerPrefix+"Grpc-Status", fmt.Sprint(status))
	h.Set(http.TrailerPrefix+"Grpc-Message", grpcMessage(upstream.OneLine(msg)))
	h.Set(http.TrailerPrefix+"X-Meshlet-Error", c.out.Code)
}

// hopByHop reports whether an answer header belongs to the hop from the
// instance (HTTP/1.1 connection headers, which HTTP/2 forbids).
func hopByHop(name string, h http.Header) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer":
		return true
	}
	for _, v := range h["Connection"] {
		if httpguts.HeaderValuesContainsToken([]string{v}, name) {
			return true
		}
	}
	return false
}
