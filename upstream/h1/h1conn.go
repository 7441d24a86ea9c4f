package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// msgAppClosed is the body of the 502 an app gets when it half-closed its
// connection while its answer was awaited (upstream.ErrCodeAppClosed).
const msgAppClosed = "meshlet: the app closed its side of the connection before the answer came; the request to the instance was abandoned"

// earlyAnswerWait is how long an instance that stopped reading a request
// body may take to show the answer it sent early.
const earlyAnswerWait = 100 * time.Millisecond

// lingerTime bounds how long an unread request body is drained before its
// connection closes (see closeWrite).
const lingerTime = 500 * time.Millisecond

// appIdleTimeout is how long an app's keep-alive connection may wait for
// its next request, as the net/http path's IdleTimeout.
const appIdleTimeout = frontend.AppIdleTimeout

// DefaultAppCheck is the slice of the forwarder's waits on an instance:
// how late it may notice that the app left, or that an instance it sends
// a request body to answered instead of reading.
const DefaultAppCheck = time.Second

// HandOff serves, with another front-end, a connection whose next request
// the forwarder does not serve; rest are the bytes it read of it already,
// from the start of that request, to be replayed first. It returns when
// the connection is done and closes it.
type HandOff func(ctx context.Context, conn net.Conn, rest []byte, t *upstream.Target)

// Config is what a [Forwarder] needs besides the routing core.
type Config struct {
	// HandOff takes the connections of requests the forwarder leaves to
	// net/http (see Forwarder.Serve). Nil closes them instead.
	HandOff HandOff

	// AppCheck is how often the forwarder, while it waits on an instance,
	// looks whether the app is still there. Zero means DefaultAppCheck;
	// tests shorten it.
	AppCheck time.Duration
}

// Forwarder is the HTTP/1.1 front-end: it serves an app's connection
// request by request, with pooled keep-alive connections to instances.
type Forwarder struct {
	mesh    *upstream.Mesh
	log     *slog.Logger
	cfg     Config
	h1conns sync.Pool // *h1conn, the per-connection state
	upPools *upPools  // the connections to instances
}

// New returns the forwarder of mesh.
func New(mesh *upstream.Mesh, cfg Config) *Forwarder {
	if cfg.AppCheck <= 0 {
		cfg.AppCheck = DefaultAppCheck
	}
	f := &Forwarder{mesh: mesh, log: mesh.Logger(), cfg: cfg, upPools: newUpPools(mesh.Dial)}
	f.h1conns.New = f.newH1conn
	return f
}

// Close closes the idle connections to instances and stops pooling
// (those of requests still in flight close when they end).
func (f *Forwarder) Close() { f.upPools.close() }

// h1conn is the forwarder's state for one app connection: it reads each
// request, sends it to an instance and relays the answer, in Serve's
// goroutine, one request at a time (pipelined ones wait in the buffer).
// It is pooled: buffers and slices are reused by the next connection.
type h1conn struct {
	f      *Forwarder
	m      *upstream.Mesh
	ctx    context.Context
	live   *frontend.LiveConn
	c      net.Conn
	target *upstream.Target
	host   string // target's Host, for requests without one

	rd    connReader
	bw    *bufio.Writer
	req   head
	resp  head
	out   []byte   // the head sent to the instance
	xff   []byte   // the app's address, appended to X-Forwarded-For
	body  bodyCopy // the request's
	rbody bodyCopy // the answer's
	rec   replayBuf
	// method of the request in flight: req's slices do not outlive the
	// reading of its body, which moves the buffer.
	method string
	num    [20]byte // scratch for numbers written
	pick   upstream.Pick
	// outcome of the request in flight, for Mesh.Done.
	outcome upstream.Outcome
	// addID: the request has no X-Request-Id and gets outcome.RequestID
	// (only while the access log is on).
	addID bool
	// abort: an answer was cut short; the connection ends with a reset
	// so that the app sees an error, never a clean end.
	abort bool
	// idleUntil is the idle read deadline armed on the app's connection;
	// zero when another one (or none) is.
	idleUntil time.Time

	cookies upstream.CookieFinder
}

func (f *Forwarder) newH1conn() any {
	s := &h1conn{f: f, m: f.mesh, bw: bufio.NewWriterSize(nil, writeBufSize), out: make([]byte, 0, 512)}
	s.cookies = s.stickyCookies
	s.rd.buf = make([]byte, readBufSize)
	return s
}

// Serve serves the HTTP/1.1 connection conn of the app to t, whose first
// bytes, peeked, were read already (at most a few). live is the
// dispatcher's record of the connection: it closes the instance
// connection of the request in flight too, and says when to drain. What
// the forwarder does not do (upgrades such as websocket, Expect:
// 100-continue, HTTP/1.0 and other 1.x, CONNECT, targets other than a
// path) goes to Config.HandOff, at a request boundary and before anything
// was answered on the connection for that request. Serve closes conn.
func (f *Forwarder) Serve(ctx context.Context, live *frontend.LiveConn, conn net.Conn, peeked []byte, t *upstream.Target) {
	s := f.h1conns.Get().(*h1conn)
	buf := s.rd.buf
	if len(buf) != readBufSize {
		buf = make([]byte, readBufSize)
	}
	s.ctx, s.live, s.c, s.target, s.host = ctx, live, conn, t, t.Host()
	s.idleUntil = time.Time{}
	s.rd.reset(conn, buf)
	s.rd.w = copy(buf, peeked) // sniff reads less than readBufSize
	s.bw.Reset(conn)
	s.xff = f.mesh.AppendClientIP(s.xff[:0], conn.RemoteAddr())
	handOff := s.serve()
	var rest []byte
	if handOff >= 0 {
		rest = append([]byte(nil), s.rd.buf[handOff:s.rd.w]...)
	}
	abort := s.abort
	s.ctx, s.live, s.c, s.target, s.host, s.abort = nil, nil, nil, nil, "", false
	s.pick.Reset()
	s.bw.Reset(nil)
	s.rd.reset(nil, s.rd.buf)
	s.shrink()
	s.rec.reset()
	f.h1conns.Put(s)
	if handOff >= 0 {
		if f.cfg.HandOff == nil {
			conn.Close()
			return
		}
		f.cfg.HandOff(ctx, conn, rest, t)
		return
	}
	if abort {
		resetOnClose(conn)
	}
	conn.Close()
}

// idleRearm is how much of the app's idle timeout may pass before its
// deadline is armed again: arming it costs a timer update, and once per
// request is most of what deadlines cost the forwarder.
const idleRearm = time.Minute

// armIdle arms the app connection's idle read deadline, unless the one
// armed still leaves all but idleRearm of it.
func (s *h1conn) armIdle(now time.Time) {
	if s.idleUntil.Sub(now) >= appIdleTimeout-idleRearm {
		return
	}
	s.idleUntil = now.Add(appIdleTimeout)
	s.c.SetReadDeadline(s.idleUntil)
}

// shrink drops what a large head grew (the heads' fields, the read buffer
// when it holds nothing, the head for the instance), so that a connection
// that waits for its next request, or an h1conn in the pool, keeps no
// more than the usual. A hostile head costs its memory only while it
// passes.
func (s *h1conn) shrink() {
	s.req.release()
	s.resp.release()
	if len(s.rd.buf) > readBufSize && s.rd.r == s.rd.w {
		s.rd.buf, s.rd.r, s.rd.w = make([]byte, readBufSize), 0, 0
	}
	if cap(s.out) > 16<<10 {
		s.out = make([]byte, 0, 512)
	}
}

// resetOnClose makes the Close of c reset the connection (SO_LINGER 0):
// the app's reads then fail, where a FIN would end a cut answer as if it
// were whole.
func resetOnClose(c net.Conn) {
	if lc, ok := c.(interface{ SetLinger(int) error }); ok {
		lc.SetLinger(0)
	}
}

// serve runs the request loop. It returns the offset in the read buffer
// of a request to hand to net/http with what follows, or -1 when the
// connection is done.
func (s *h1conn) serve() int {
	for {
		s.method = ""
		s.body = bodyCopy{phase: phaseDone}
		s.shrink()
		if !s.live.SetIdle(true) {
			return -1
		}
		s.armIdle(time.Now())
		if s.rd.r == s.rd.w {
			yieldBeforeWait()
		}
		raw, err := s.rd.readHead(true)
		if !s.live.SetIdle(false) {
			return -1 // Shutdown began before this request: as if it came late
		}
		if err != nil {
			if errors.Is(err, errHeadTooLarge) {
				s.refused(431, "meshlet: request header fields too large")
			}
			return -1
		}
		if err := parseRequestHead(raw, &s.req); err != nil {
			status := 400
			var he *headError
			if errors.As(err, &he) {
				status = he.status
			}
			s.body.phase = phaseUntilEOF // whatever body it has is unknown: drained at the close
			s.f.log.Debug("refusing a malformed request", "service", s.target.Service(), "from", s.c.RemoteAddr(), "err", err)
			s.refused(status, "meshlet: bad request: "+upstream.OneLine(err.Error()))
			return -1
		}
		if s.handsOff() {
			return s.rd.r - len(raw)
		}
		if !s.forward() {
			return -1
		}
	}
}

// refused answers a request refused before it was routed (a malformed
// head), and counts it.
func (s *h1conn) refused(status int, msg string) {
	s.pick.Reset() // no routing: not the previous request's
	s.outcome = upstream.Outcome{Start: time.Now(), Method: s.method}
	s.answer(status, upstream.ErrCodeBadRequest, msg, true)
	s.m.Done(s.target, &s.pick, &s.outcome)
}

// handsOff reports whether the request goes to the net/http path: an
// upgrade (websocket), Expect: 100-continue, HTTP/1.0 (and other 1.x),
// CONNECT, and request targets other than a path (absolute-form, *).
func (s *h1conn) handsOff() bool {
	r := &s.req
	return r.minor != 1 || r.upgrade || r.expect || string(r.method) == "CONNECT" || r.target[0] != '/'
}

// stickyCookies calls found for the sticky cookie values of the request.
func (s *h1conn) stickyCookies(name string, found func(upstream.StickyID) bool) {
	seen := 0
	for i := range s.req.fields {
		if f := &s.req.fields[i]; f.kind == fieldCookie {
			if _, stop := upstream.StickyCookieLine(string(f.value), name, &seen, found); stop {
				return
			}
		}
	}
}

// methodString returns common methods without allocating.
func methodString(b []byte) string {
	for _, m := range [...]string{"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"} {
		if string(b) == m {
			return m
		}
	}
	return string(b)
}

// idempotent methods may be sent again after a failure (see upstream.Mesh.Retry).
func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE":
		return true
	}
	return false
}

// errRequestTimeout is an attempt cut by the request's own timeout.
var errRequestTimeout = upstream.ErrRequestTimeout

// forward proxies the parsed request, counts it (Mesh.Done) and reports
// whether the connection goes on with the next one.
func (s *h1conn) forward() bool {
	s.outcome = upstream.Outcome{Start: time.Now(), Method: methodString(s.req.method)}
	s.addID = false
	if s.m.AccessLogging() {
		s.requestID()
	}
	keep := s.forwardOnce()
	s.outcome.BytesIn = s.body.n
	s.m.Done(s.target, &s.pick, &s.outcome)
	return keep
}

// requestID takes the request's X-Request-Id for the access log, or
// makes one that buildOut adds.
func (s *h1conn) requestID() {
	for i := range s.req.fields {
		if f := &s.req.fields[i]; bytes.EqualFold(f.name, []byte(upstream.RequestIDHeader)) {
			s.outcome.RequestID = string(f.value)
			return
		}
	}
	s.outcome.RequestID = string(upstream.AppendRequestID(s.num[:0:0]))
	s.addID = true
}

// forwardOnce proxies the parsed request and reports whether the
// connection goes on with the next one.
func (s *h1conn) forwardOnce() bool {
	m, r, p := s.m, &s.req, &s.pick
	s.method = s.outcome.Method
	s.body.start(r.contentLength, r.chunked, false)
	closeApp := r.connClose
	code, msg, ok := m.Choose(s.ctx, s.target, p, s.cookies)
	if !ok {
		return s.answer(upstream.ChooseStatus(code), code, msg, closeApp || !s.body.done())
	}
	s.buildOut()
	s.rec.reset()
	var deadline time.Time
	if timeout := p.Policy().Timeout; timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if !s.body.done() {
		// The body is read with the request's deadline; without a body
		// nothing is read from the app until its next request, and the
		// idle deadline armed for it may stay.
		s.c.SetReadDeadline(deadline)
		s.idleUntil = time.Time{}
	}
	method := s.method
	staleRetried := false
	fresh := false
	for attempt := 0; ; {
		res := s.try(p, deadline, fresh, method)
		switch {
		case res.err == nil:
			return res.keep && !closeApp
		case res.appFailed:
			// The app's side: never the instance's failure.
			var sf *srcFailed
			switch {
			case res.relayed:
				// The app may only have half-closed: the rest of its
				// answer would then end in a FIN and look whole.
				s.bw.Flush()
				s.abort = true
				s.outcome.Code, s.outcome.CutShort = upstream.ErrCodeAppClosed, true
				s.f.log.Debug("app connection failed during the answer", "service", s.target.Service(), "err", res.err)
			case errors.Is(res.err, errAppGone):
				// A FIN while the answer was awaited: the app left, or
				// half-closed and still reads. Its request was abandoned
				// (the instance connection closed); it is told so, which
				// is harmless when it is really gone.
				s.f.log.Debug("app closed its connection while its answer was awaited", "service", s.target.Service())
				s.answer(502, upstream.ErrCodeAppClosed, msgAppClosed, true)
			case errors.As(res.err, &sf) && !isNetError(sf.err):
				s.answer(400, upstream.ErrCodeBadRequest, "meshlet: bad request body: "+upstream.OneLine(sf.err.Error()), true)
			case errors.Is(res.err, os.ErrDeadlineExceeded) && pastDeadline(deadline):
				// The request's timeout passed while its body came.
				status, code, msg := m.FailureAnswer(p, &upstream.InstanceError{Addr: p.Endpoint().Addr, Err: errRequestTimeout}, true)
				s.answer(status, code, msg, true)
			default:
				s.f.log.Debug("app connection failed during its request", "service", s.target.Service(), "err", res.err)
				s.outcome.Code = upstream.ErrCodeAppClosed
			}
			return false
		case res.relayed:
			// The answer had begun: nothing is retried, the app's
			// connection ends with a reset so that it sees the answer
			// cut short.
			s.bw.Flush()
			s.abort = true
			s.outcome.Code, s.outcome.CutShort = upstream.ErrCodeFailed, true
			if errors.Is(res.err, errRequestTimeout) || errors.Is(res.err, upstream.ErrTryTimeout) {
				s.outcome.Code = upstream.ErrCodeTimeout
			}
			s.f.log.Warn("instance failed during its answer", "service", s.target.Service(),
				"instance", p.Endpoint().Addr, "err", res.err)
			return false
		}
		err := res.err
		if s.live.IsClosed() {
			return false
		}
		timedOut := errors.Is(err, errRequestTimeout)
		if !timedOut && res.reused && !res.gotBytes && !staleRetried && !errors.Is(err, upstream.ErrTryTimeout) &&
			!s.rec.overflow && idempotent(method) {
			// A pooled connection the instance had closed: once more on a
			// new connection to the same instance, not counted as its
			// failure (net/http's transport does the same).
			staleRetried, fresh = true, true
			s.f.log.Debug("retrying on a new connection after a stale one failed", "service", s.target.Service(),
				"instance", p.Endpoint().Addr, "err", err)
			continue
		}
		fresh = false
		if !timedOut && !res.gotBytes && m.Retry(p, method, !s.rec.overflow, err, attempt) {
			attempt++
			continue
		}
		// A failure of the instance counts against it; the request's own
		// timeout passing is no failure of the instance, unless it cut a
		// connect short: a connect that slow ejects it (unreachable.go).
		if (!timedOut && res.gotBytes) || (timedOut && upstream.IsDialFailure(err)) {
			m.Failed(p, err)
		}
		status, code, msg := m.FailureAnswer(p, &upstream.InstanceError{Addr: p.Endpoint().Addr, Err: err}, timedOut)
		return s.answer(status, code, msg, closeApp || !s.body.done())
	}
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// tryResult is how one attempt went.
type tryResult struct {
	err       error
	keep      bool // the app's connection may carry the next request
	relayed   bool // the answer's head was written to the app
	appFailed bool // the app's side failed (or sent a bad body)
	gotBytes  bool // some of an answer came from the instance
	reused    bool // the connection came from the pool
	sentBody  bool // some of the request body was sent on this attempt
}

// try makes one attempt on the pick's current instance; fresh asks for a
// new connection rather than a pooled one.
func (s *h1conn) try(p *upstream.Pick, deadline time.Time, fresh bool, method string) (res tryResult) {
	m, f := s.m, s.f
	e := p.Endpoint()
	inFlight := p.InFlight()
	inFlight.Add(1)
	defer inFlight.Add(-1)
	now := time.Now()
	tryDeadline := deadline
	if tryTimeout := p.Policy().TryTimeout; tryTimeout > 0 {
		if td := now.Add(tryTimeout); deadline.IsZero() || td.Before(deadline) {
			tryDeadline = td
		}
	}
	pool := f.upPools.pool(e.Addr)
	defer f.upPools.release(pool)
	var uc *upConn
	if !fresh {
		for uc = f.upPools.get(pool); uc != nil; uc = f.upPools.get(pool) {
			// Every time, whatever the method: bytes that came while it
			// was idle (a body after a HEAD, say) would be this request's
			// answer. One system call per request.
			if uc.alive() {
				break
			}
			uc.c.Close()
		}
		res.reused = uc != nil
	}
	if uc == nil {
		var err error
		p.ConnectBegins(now)
		uc, err = f.upPools.open(s.ctx, e.Addr, tryDeadline)
		p.ConnectEnded()
		if err != nil {
			if !tryDeadline.IsZero() && !time.Now().Before(tryDeadline) {
				// The dial used up the time; still a dial, that never
				// reached the instance.
				err = upstream.DialFailure(e.Addr, s.timeoutCause(os.ErrDeadlineExceeded, deadline))
			}
			res.err = err
			return res
		}
	}
	if !s.live.SetUp(uc.c) {
		res.err = net.ErrClosed
		return res
	}
	reusable := false
	defer func() {
		// Detached before it is pooled: once pooled it may be another
		// request's, and a Close of this app connection must not reach it.
		if closed := s.live.Detach(); reusable && !closed {
			f.upPools.put(pool, uc)
		} else {
			uc.c.Close()
		}
	}()
	// Reads and writes wait in slices (h1wait.go): the app may leave, the
	// instance may answer before it reads the whole body.
	every := f.cfg.AppCheck
	uc.rs.app, uc.rs.every, uc.rs.until = s.c, every, tryDeadline
	uc.w.every, uc.w.until = every, tryDeadline
	uc.armSlice(now, sliceEnd(now, every, tryDeadline), every)

	// The request: head, what an earlier attempt sent of the body, the rest.
	uc.bw.Write(s.out)
	if len(s.rec.b) > 0 {
		res.sentBody = true
		uc.bw.Write(s.rec.b)
	}
	var writeErr error
	if !s.body.done() {
		res.sentBody = true
		if err := s.body.copy(uc.bw, &uc.w, &s.rd, &s.rec); err != nil {
			var sf *srcFailed
			if errors.As(err, &sf) {
				res.appFailed, res.err = true, err
				return res
			}
			writeErr = err
		}
	}
	if writeErr == nil {
		writeErr = uc.bw.Flush()
	}
	if writeErr != nil {
		// The instance may have answered early (a 413, a 401) and stopped
		// reading: that answer is the one to give, if it is there.
		uc.rs.until = time.Now().Add(earlyAnswerWait)
		uc.c.SetReadDeadline(uc.rs.until)
		uc.armed = false
	}

	// The answer: interim heads passed on, then the final one.
	if writeErr == nil {
		yieldBeforeWait()
	}
	rh := &s.resp
	for {
		raw, err := uc.rd.readHead(false)
		if err != nil {
			if errors.Is(err, errAppGone) {
				// Not the instance's failure; its connection closes.
				res.appFailed, res.err = true, err
				return res
			}
			res.gotBytes = len(uc.rd.buffered()) > 0 || res.relayed
			if writeErr != nil {
				err = writeErr
			}
			res.err = s.timeoutCause(err, deadline)
			return res
		}
		res.gotBytes = true
		if err := parseResponseHead(raw, rh); err != nil {
			res.err = err
			return res
		}
		if rh.status >= 200 {
			break
		}
		if rh.status == 101 {
			res.err = errors.New("unasked-for 101 Switching Protocols")
			return res
		}
		s.writeRespHead(rh, nil, 0, false, false)
		if err := s.bw.Flush(); err != nil {
			res.appFailed, res.err = true, err
			return res
		}
		res.relayed = true // an interim answer is an answer begun
	}
	m.Answered(p, rh.status)

	// Framing of the answer (RFC 9112 6.3).
	noBody := method == "HEAD" || rh.status == 204 || rh.status == 304
	if rh.chunked && rh.contentLength >= 0 && !noBody {
		res.err = errors.New("answer with both Transfer-Encoding and Content-Length")
		return res
	}
	// An answer delimited by the instance's close goes to the app in
	// chunks (as net/http's path does): its end is then the last chunk,
	// written only when the instance closed cleanly, and the app's
	// connection can carry the next request.
	untilEOF := !noBody && !rh.chunked && rh.contentLength < 0
	// After an early answer the rest of the request body is still on its
	// way: the connection cannot carry another request.
	closeApp := s.req.connClose || writeErr != nil || s.live.IsDraining()
	if noBody {
		s.rbody.start(-1, false, false)
	} else {
		s.rbody.start(rh.contentLength, rh.chunked, untilEOF)
	}
	if untilEOF {
		// Chunks pass through the buffers, not spliced: large reads keep
		// them near splice speed (4 KiB ones halved it). The connection
		// is not pooled after such an answer, so the buffer is its until
		// the end.
		bp := f.upPools.bufs.Get().(*[]byte)
		n := copy(*bp, uc.rd.buffered()) // a head's remains: at most maxRespHeadSize
		uc.rd.buf, uc.rd.r, uc.rd.w = *bp, 0, n
		defer func() {
			uc.rd.reset(nil, nil)
			f.upPools.bufs.Put(bp)
		}()
	}
	cookie := ""
	if v, ok := p.PinCookie(); ok && !s.respSetsCookie(p.Policy().CookieName) {
		cookie = v
	}
	// The try timeout was for the head; the body has the request's. The
	// slice armed goes on: when it passes, the next one ends at deadline.
	uc.rs.until = deadline
	s.writeRespHead(rh, &cookie, 1, untilEOF, closeApp)
	res.relayed = true
	s.outcome.Status = rh.status
	err := s.rbody.copy(s.bw, s.c, &uc.rd, nil)
	s.outcome.BytesOut = s.rbody.n
	if err != nil {
		var df *dstFailed
		res.appFailed = errors.As(err, &df) || errors.Is(err, errAppGone) // writing to the app failed, or it left
		res.err = s.timeoutCause(err, deadline)
		return res
	}
	if err := s.bw.Flush(); err != nil {
		res.appFailed, res.err = true, err
		return res
	}
	reusable = writeErr == nil && !untilEOF && !rh.connClose && (rh.minor >= 1 || rh.connKeepAlive) && len(uc.rd.buffered()) == 0
	res.keep = !closeApp
	if closeApp {
		s.closeWrite()
	}
	return res
}

// pastDeadline reports whether deadline (zero: none) has passed.
func pastDeadline(deadline time.Time) bool {
	return !deadline.IsZero() && !time.Now().Before(deadline)
}

// timeoutCause names the timeout behind a deadline error: the request's
// own, or the attempt's.
func (s *h1conn) timeoutCause(err error, deadline time.Time) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if pastDeadline(deadline) {
		return errRequestTimeout
	}
	return upstream.ErrTryTimeout
}

// respSetsCookie reports whether the answer sets the cookie name itself.
func (s *h1conn) respSetsCookie(name string) bool {
	for i := range s.resp.fields {
		if f := &s.resp.fields[i]; f.kind == fieldSetCookie && upstream.CookieLineNames(string(f.value), name) {
			return true
		}
	}
	return false
}
