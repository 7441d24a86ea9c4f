package upstream

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
)

// Codes of the X-Meshlet-Error header, for the app's logs and for tests.
const (
	ErrCodeNoInstance  = "no-healthy-instance"
	ErrCodeNoAnswer    = "no-consul-answer"
	ErrCodeUnreachable = "instance-unreachable"
	ErrCodeFailed      = "instance-failed"
)

// connTarget is what a connection handed to the HTTP server is for.
type connTarget struct {
	watch *serviceWatch
	host  string // the name the app used, for requests without a Host
}

// pick is the instance chosen for one request.
type pick struct {
	target   *connTarget
	set      *EndpointSet
	endpoint Endpoint
}

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
		Rewrite:      rewrite,
		Transport:    &retryOnDialError{next: newTransport(markDialErrors(m.cfg.Dialer)), log: m.log},
		BufferPool:   newBufferPool(32 << 10),
		ErrorHandler: m.proxyError,
		ErrorLog:     slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
	}
}

// rewrite sends the request to the picked instance with the Host the app
// used, so that instances see what they would see without the mesh.
func rewrite(pr *httputil.ProxyRequest) {
	p := pickFrom(pr.In.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = p.endpoint.Addr
	host := pr.In.Host
	if host == "" {
		host = p.target.host
	}
	pr.Out.Host = host
	// The app may itself be a proxy: keep the chain it sends and add it.
	if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
		pr.Out.Header["X-Forwarded-For"] = xff
	}
	pr.SetXForwarded()
	pr.Out.Header.Set("X-Forwarded-Host", host)
}

// serveHTTP picks an instance for one request and proxies it.
func (m *Mesh) serveHTTP(w http.ResponseWriter, r *http.Request) {
	t, _ := r.Context().Value(targetKey{}).(*connTarget)
	if t == nil {
		writeError(w, http.StatusInternalServerError, "internal", "meshlet: request without a service")
		return
	}
	answered := t.watch.awaitFirstAnswer(r.Context(), m.cfg.FirstAnswerTimeout)
	set := t.watch.set.Load()
	e, ok := t.watch.selector.Select(set, r)
	if !ok {
		if !answered {
			writeError(w, http.StatusServiceUnavailable, ErrCodeNoAnswer,
				fmt.Sprintf("meshlet: consul has not answered yet for service %q", t.watch.name))
			return
		}
		writeError(w, http.StatusServiceUnavailable, ErrCodeNoInstance,
			fmt.Sprintf("meshlet: no healthy instance of service %q", t.watch.name))
		return
	}
	ctx := context.WithValue(r.Context(), pickKey{}, &pick{target: t, set: set, endpoint: e})
	m.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// proxyError answers a request whose instance failed.
func (m *Mesh) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	p := pickFrom(r.Context())
	addr := p.endpoint.Addr
	var ie *instanceError
	if errors.As(err, &ie) {
		addr = ie.addr
	}
	if r.Context().Err() != nil {
		// The app went away; nobody reads this answer.
		m.log.Debug("request canceled by the app", "service", p.target.watch.name, "instance", addr, "err", err)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	code, what := ErrCodeFailed, "failed"
	var de *dialError
	if errors.As(err, &de) {
		code, what = ErrCodeUnreachable, "unreachable"
	}
	m.log.Warn("instance failed", "service", p.target.watch.name, "instance", addr, "err", err)
	writeError(w, http.StatusBadGateway, code,
		fmt.Sprintf("meshlet: instance %s of service %q %s: %s", addr, p.target.watch.name, what, oneLine(err.Error())))
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
