// Package httpfallback is the net/http front-end of upstream: one
// internal http.Server, fed through a listener of its own, and one
// httputil.ReverseProxy serve what the HTTP/1.1 forwarder (upstream/h1)
// does not: upgrades such as websocket, Expect: 100-continue, HTTP/1.0,
// CONNECT and targets other than a path. The forwarder hands it a whole
// connection at a request boundary, with the bytes it read already; this
// package does not know who hands it. It picks, retries and answers
// errors through the routing core (upstream.Mesh), as the forwarder does.
package httpfallback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// Server is the net/http path: an http.Server and a ReverseProxy shared by
// the connections of every service.
type Server struct {
	mesh      *upstream.Mesh
	log       *slog.Logger
	proxy     *httputil.ReverseProxy
	server    *http.Server
	listener  *connListener
	startHTTP sync.Once
}

// New returns the net/http path of mesh; its server starts with the first
// connection Serve gets.
func New(mesh *upstream.Mesh) *Server {
	s := &Server{mesh: mesh, log: mesh.Logger(), listener: newConnListener()}
	s.proxy = s.newReverseProxy()
	s.server = &http.Server{
		Handler: http.HandlerFunc(s.serveHTTP),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*servedConn); ok {
				return context.WithValue(ctx, targetKey{}, sc.target)
			}
			return ctx
		},
		IdleTimeout:    frontend.AppIdleTimeout, // as the forwarder's
		MaxHeaderBytes: frontend.MaxHeadSize,    // as the forwarder's limit
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve serves conn, a connection of the app to t, until it is done;
// peeked are bytes already read from it, replayed first. It closes conn.
func (s *Server) Serve(ctx context.Context, conn net.Conn, peeked []byte, t *upstream.Target) {
	s.startHTTP.Do(func() {
		go func() {
			if err := s.server.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("internal http server stopped", "err", err)
			}
		}()
	})
	sc := &servedConn{
		Conn:   &peekedConn{Conn: conn, peeked: peeked},
		target: t,
		done:   make(chan struct{}),
	}
	if !s.listener.hand(ctx, sc) {
		sc.Close()
		return
	}
	<-sc.done
}

// Shutdown stops the server: idle keep-alive connections close at once,
// requests in flight run until ctx ends (see http.Server.Shutdown).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.server.Shutdown(ctx)
	s.listener.Close()
	return err
}

// Close closes every connection the server still has.
func (s *Server) Close() error { return s.server.Close() }

// pick is the routing of one request on this path, with the app's side
// of it: a retry is pointless once the app went away.
type pick struct {
	upstream.Pick
	client context.Context
}

type (
	targetKey struct{}
	pickKey   struct{}
)

func pickFrom(ctx context.Context) *pick {
	p, _ := ctx.Value(pickKey{}).(*pick)
	return p
}

// peekedConn replays the bytes read before the hand-off, then reads on
// from the conn.
type peekedConn struct {
	net.Conn
	peeked []byte
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// newTransport returns the one pooled transport to instances. Compression
// stays the app's business, and instances get plain HTTP/1.1.
func newTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		MaxIdleConns:          2048,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		Protocols:             protocols,
		ExpectContinueTimeout: time.Second,
	}
}

// newReverseProxy builds the proxy used for every HTTP request.
func (s *Server) newReverseProxy() *httputil.ReverseProxy {
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return s.mesh.Dial(ctx, addr) }
	return &httputil.ReverseProxy{
		Rewrite:        s.rewrite,
		Transport:      &retryTransport{next: newTransport(dial), m: s.mesh},
		BufferPool:     frontend.NewBufferPool(32 << 10),
		ModifyResponse: modifyResponse,
		ErrorHandler:   s.proxyError,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// rewrite sends the request to the picked instance with the Host the app
// used, so that instances see what they would see without the mesh.
func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	p := pickFrom(pr.In.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = p.Endpoint().Addr
	host := pr.In.Host
	if host == "" {
		host = p.Target().Host()
	}
	pr.Out.Host = host
	// The app may itself be a proxy: keep the chain it sends and add it,
	// as the forwarder does (buildOut); not SetXForwarded, which would
	// name the loopback address the app came from.
	chain := pr.In.Header["X-Forwarded-For"]
	if ip := s.mesh.ClientIP(pr.In.RemoteAddr); ip != "" {
		chain = append(chain[:len(chain):len(chain)], ip)
	}
	if len(chain) > 0 {
		pr.Out.Header.Set("X-Forwarded-For", strings.Join(chain, ", "))
	}
	pr.Out.Header.Set("X-Forwarded-Host", host)
	pr.Out.Header.Set("X-Forwarded-Proto", "http")
}

// modifyResponse pins the client to the instance that answered, when the
// service is sticky and the request's cookie named another one (or none).
// A cookie of the same name that the instance sets itself is left alone,
// and no second one is added.
func modifyResponse(resp *http.Response) error {
	if resp.Request == nil {
		return nil
	}
	p := pickFrom(resp.Request.Context())
	if p == nil {
		return nil
	}
	if v, ok := p.PinCookie(); ok && !upstream.SetsCookie(resp.Header, p.Policy().CookieName) {
		resp.Header.Add("Set-Cookie", v)
	}
	return nil
}

// serveHTTP picks an instance for one request and proxies it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	t, _ := r.Context().Value(targetKey{}).(*upstream.Target)
	if t == nil {
		writeError(w, http.StatusInternalServerError, "internal", "meshlet: request without a service")
		return
	}
	p := &pick{client: r.Context()}
	rec := &recorder{ResponseWriter: w, out: upstream.Outcome{Start: time.Now(), Method: r.Method}}
	w = rec
	if s.mesh.AccessLogging() {
		rec.out.RequestID = upstream.RequestID(r.Header)
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &appBody{ReadCloser: r.Body, n: &rec.out.BytesIn}
	}
	defer s.mesh.Done(t, &p.Pick, &rec.out)
	if name, ok := framingVariant(r.Header); ok {
		// As the forwarder refuses it (parseFields): net/http takes such a
		// name for an ordinary header, and ReverseProxy would pass it on.
		s.log.Debug("refusing a request with a framing header variant", "service", t.Service(), "from", r.RemoteAddr, "header", name)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, upstream.ErrCodeBadRequest,
			upstream.OneLine(fmt.Sprintf("meshlet: bad request: header %q could be read as Content-Length or Transfer-Encoding by an instance", name[:min(len(name), 64)])))
		return
	}
	code, msg, ok := s.mesh.Choose(r.Context(), t, &p.Pick, func(name string, found func(upstream.StickyID) bool) {
		upstream.StickyCookies(r.Header, name, found)
	})
	if !ok {
		writeError(w, upstream.ChooseStatus(code), code, msg)
		return
	}
	ctx := context.WithValue(r.Context(), pickKey{}, p)
	if timeout := p.Policy().Timeout; timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// framingVariant returns the first header name of h that an instance
// could read as a framing header although it is not one (see
// frontend.FramingLike). net/http's server keeps the real Content-Length
// under its canonical name and takes Transfer-Encoding out of the header.
func framingVariant(h http.Header) (string, bool) {
	for name := range h {
		if name != "Content-Length" && name != "Transfer-Encoding" && frontend.FramingLike(name) {
			return name, true
		}
	}
	return "", false
}

// proxyError answers a request whose instance failed.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	p := pickFrom(r.Context())
	if p.client.Err() != nil {
		// The app went away; nobody reads this answer.
		s.log.Debug("request canceled by the app", "service", p.Target().Service(), "instance", upstream.FailedAddr(&p.Pick, err), "err", err)
		if rec, ok := w.(*recorder); ok {
			rec.out.Code = upstream.ErrCodeAppClosed
		}
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	status, code, msg := s.mesh.FailureAnswer(&p.Pick, err, r.Context().Err() != nil)
	writeError(w, status, code, msg)
}

// writeError writes a one-line text answer from the mesh itself.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	if rec, ok := w.(*recorder); ok {
		rec.out.Code = code
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Meshlet-Error", code)
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// recorder keeps what Mesh.Done needs of an answer: its status and the
// body bytes written. It passes Flush on, and the hijack of an upgrade
// through Unwrap (http.ResponseController).
type recorder struct {
	http.ResponseWriter
	out upstream.Outcome
}

func (r *recorder) WriteHeader(status int) {
	if r.out.Status == 0 && (status >= 200 || status == http.StatusSwitchingProtocols) {
		r.out.Status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.out.Status == 0 {
		r.out.Status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.out.BytesOut += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// appBody counts the request body bytes read from the app.
type appBody struct {
	io.ReadCloser
	n *int64
}

func (b *appBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	*b.n += int64(n)
	return n, err
}
