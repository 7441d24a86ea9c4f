package upstream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"
)

// Codes of the X-Meshlet-Error header, for the app's logs and for tests.
const (
	ErrCodeNoInstance  = "no-healthy-instance"
	ErrCodeNoAnswer    = "no-consul-answer"
	ErrCodeStale       = "stale-instances"
	ErrCodeUnreachable = "instance-unreachable"
	ErrCodeFailed      = "instance-failed"
	ErrCodeTimeout     = "timeout"
	// ErrCodeAppClosed: the app half-closed its connection (FIN) while
	// its answer was awaited; the request to the instance was abandoned.
	ErrCodeAppClosed = "app-closed"
)

// connTarget is what a connection handed to the HTTP server is for.
type connTarget struct {
	watch *serviceWatch
	host  string // the name the app used, for requests without a Host
}

// pick is the routing of one request: the set and policy it routes on,
// the instance of its current attempt and those it tried. Only the
// request's own goroutine touches it.
type pick struct {
	target *connTarget
	set    *EndpointSet
	policy *Policy
	idx    int   // endpoint of the current (last) attempt
	tried  []int // endpoints tried, idx last
	cookie int   // endpoint the request's sticky cookie names; -1: none
	client context.Context
	// budgetDenied is set when a retry was refused for want of budget.
	budgetDenied bool
	now          int64          // unix ns when the pick was made
	avail        func(int) bool // see availableNow
}

func (p *pick) endpoint() Endpoint { return p.set.At(p.idx) }

type (
	targetKey struct{}
	pickKey   struct{}
)

func pickFrom(ctx context.Context) *pick {
	p, _ := ctx.Value(pickKey{}).(*pick)
	return p
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

// dialError marks an error of the dial to an instance: the request never
// reached it, so it may go to another one.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// markDialErrors wraps dial so that its failures are recognisable as
// dialError whatever the transport does around them.
func markDialErrors(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &dialError{addr: addr, err: err}
		}
		return c, nil
	}
}

// newReverseProxy builds the proxy used for every HTTP request.
func (m *Mesh) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:        m.rewrite,
		Transport:      &retryTransport{next: newTransport(markDialErrors(m.cfg.Dialer)), m: m},
		BufferPool:     newBufferPool(32 << 10),
		ModifyResponse: modifyResponse,
		ErrorHandler:   m.proxyError,
		ErrorLog:       slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}
}

// rewrite sends the request to the picked instance with the Host the app
// used, so that instances see what they would see without the mesh.
func (m *Mesh) rewrite(pr *httputil.ProxyRequest) {
	p := pickFrom(pr.In.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = p.endpoint().Addr
	host := pr.In.Host
	if host == "" {
		host = p.target.host
	}
	pr.Out.Host = host
	// The app may itself be a proxy: keep the chain it sends and add it,
	// as the forwarder does (buildOut); not SetXForwarded, which would
	// name the loopback address the app came from.
	chain := pr.In.Header["X-Forwarded-For"]
	if ip := m.cfg.clientIP(pr.In.RemoteAddr); ip != "" {
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
	if v, ok := pinCookie(p); ok && !setsCookie(resp.Header, p.policy.CookieName) {
		resp.Header.Add("Set-Cookie", v)
	}
	return nil
}

// serveHTTP picks an instance for one request and proxies it.
func (m *Mesh) serveHTTP(w http.ResponseWriter, r *http.Request) {
	t, _ := r.Context().Value(targetKey{}).(*connTarget)
	if t == nil {
		writeError(w, http.StatusInternalServerError, "internal", "meshlet: request without a service")
		return
	}
	if name, ok := framingVariant(r.Header); ok {
		// As the forwarder refuses it (parseFields): net/http takes such a
		// name for an ordinary header, and ReverseProxy would pass it on.
		m.log.Debug("refusing a request with a framing header variant", "service", t.watch.name, "from", r.RemoteAddr, "header", name)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, ErrCodeBadRequest,
			oneLine(fmt.Sprintf("meshlet: bad request: header %q could be read as Content-Length or Transfer-Encoding by an instance", clip([]byte(name)))))
		return
	}
	p := &pick{client: r.Context()}
	code, msg, ok := m.choose(r.Context(), t, p, func(name string, found func(stickyID) bool) {
		stickyCookies(r.Header, name, found)
	})
	if !ok {
		writeError(w, http.StatusServiceUnavailable, code, msg)
		return
	}
	ctx := context.WithValue(r.Context(), pickKey{}, p)
	if p.policy.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.policy.Timeout)
		defer cancel()
	}
	m.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// framingVariant returns the first header name of h that an instance
// could read as a framing header although it is not one (see
// framingLike). net/http's server keeps the real Content-Length under its
// canonical name and takes Transfer-Encoding out of the header.
func framingVariant(h http.Header) (string, bool) {
	for name := range h {
		if name != "Content-Length" && name != "Transfer-Encoding" && framingLike(name) {
			return name, true
		}
	}
	return "", false
}

// route returns the set a request or connection for the service goes to
// at now, with the view it belongs to; or, when there is none, the error
// code and message to answer with.
func (m *Mesh) route(watch *serviceWatch, now time.Time, answered bool) (*EndpointSet, *serviceView, string, string) {
	v := watch.view.Load()
	if v == nil {
		if !answered {
			return nil, nil, ErrCodeNoAnswer, fmt.Sprintf("meshlet: consul has not answered yet for service %q", watch.name)
		}
		return nil, nil, ErrCodeNoInstance, fmt.Sprintf("meshlet: no healthy instance of service %q", watch.name)
	}
	if age, stale := watch.staleness(now, m.cfg.MaxStale); stale {
		if watch.staleLogged.CompareAndSwap(false, true) {
			m.log.Warn("refusing requests: the last good instances are older than the max staleness",
				"service", watch.name, "age", age.Round(time.Second), "max_stale", m.cfg.MaxStale)
		}
		return nil, nil, ErrCodeStale, fmt.Sprintf("meshlet: consul unreachable for %v; the last good instances of service %q are older than the max staleness (%v)",
			age.Round(time.Second), watch.name, m.cfg.MaxStale)
	}
	set, panicking, why := v.route(now)
	if set == nil {
		return nil, nil, ErrCodeNoInstance, fmt.Sprintf("meshlet: no healthy instance of service %q: %s", watch.name, why)
	}
	if panicking && v.panicLogged.CompareAndSwap(false, true) {
		m.log.Warn("panic routing: no instance passes its checks, routing to all registered ones", "service", watch.name, "registered", set.Len())
	}
	return set, v, "", ""
}

// proxyError answers a request whose instance failed.
func (m *Mesh) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	p := pickFrom(r.Context())
	if p.client.Err() != nil {
		// The app went away; nobody reads this answer.
		m.log.Debug("request canceled by the app", "service", p.target.watch.name, "instance", failedAddr(p, err), "err", err)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	status, code, msg := m.failureAnswer(p, err, r.Context().Err() != nil)
	writeError(w, status, code, msg)
}

// writeError writes a one-line text answer from the mesh itself.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Meshlet-Error", code)
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// bufferPool implements httputil.BufferPool.
type bufferPool struct{ pool sync.Pool }

func newBufferPool(size int) *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

func (p *bufferPool) Get() []byte  { return *p.pool.Get().(*[]byte) }
func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }
