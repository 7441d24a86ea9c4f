// Package inbound is meshlet's mTLS listener in front of the app: it
// requires a client certificate of the mesh CA, authorizes the caller's
// service identity against Consul's intentions, and carries the bytes to
// the app's local port. It works at L4, so HTTP/1.1, HTTP/2 and any other
// TCP protocol pass unchanged; it offers no ALPN.
//
// Intentions decide at every handshake (resumed ones too) from decisions
// at most DecisionTTL old, and connections already open are checked again
// every Recheck per distinct caller: those a new deny covers are closed.
// Every refusal is logged with the peer's identity and the reason.
package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/meshlet/meshlet/certs"
)

// DefaultPort is the inbound port: the first of Consul's sidecar range
// (21000-21255), where Consul's own sidecars listen.
const DefaultPort = 21000

// Defaults of Config.
const (
	DefaultDecisionTTL      = time.Second
	DefaultRecheck          = time.Second
	DefaultAuthorizeTimeout = 2 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 2 * time.Second
)

// ServerTLS makes the server tls.Config; *certs.Manager has it.
type ServerTLS interface {
	ServerConfig(certs.Authorize) *tls.Config
}

// Config configures a Listener.
type Config struct {
	Listen  string // host:port to listen on, e.g. 10.0.0.5:21000
	App     string // the app's local address, e.g. 127.0.0.1:8080
	Service string // the app's service name: the target intentions are about
	TLS     ServerTLS
	Consul  Authorizer
	// DecisionTTL is the longest a cached decision of Consul decides a new
	// connection: an intention change takes effect within it.
	DecisionTTL time.Duration
	// Recheck is how often open connections are authorized again (per
	// distinct caller); a deny closes them within Recheck + DecisionTTL.
	Recheck          time.Duration
	AuthorizeTimeout time.Duration // the longest a handshake waits for Consul's decision
	HandshakeTimeout time.Duration
	DialTimeout      time.Duration // to the app
	Log              *slog.Logger
}

// Listener is the inbound listener.
type Listener struct {
	cfg   Config
	tls   *tls.Config
	dec   *decisions
	log   *slog.Logger
	bound chan struct{}

	base   context.Context // of every connection; cancelled by a forced shutdown
	cancel context.CancelFunc

	mu       sync.Mutex
	ln       net.Listener
	closing  bool
	conns    map[caller]map[*conn]struct{}
	wg       sync.WaitGroup // live connections
	stopOnce sync.Once
	stopped  chan struct{} // closed by Shutdown
}

// New checks cfg and returns a Listener; Serve starts it.
func New(cfg Config) (*Listener, error) {
	switch {
	case cfg.Listen == "":
		return nil, errors.New("inbound: no listen address")
	case cfg.App == "":
		return nil, errors.New("inbound: no app address")
	case cfg.Service == "":
		return nil, errors.New("inbound: no service name")
	case cfg.TLS == nil:
		return nil, errors.New("inbound: no TLS material")
	case cfg.Consul == nil:
		return nil, errors.New("inbound: no consul client")
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.DecisionTTL, DefaultDecisionTTL},
		{&cfg.Recheck, DefaultRecheck},
		{&cfg.AuthorizeTimeout, DefaultAuthorizeTimeout},
		{&cfg.HandshakeTimeout, DefaultHandshakeTimeout},
		{&cfg.DialTimeout, DefaultDialTimeout},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	l := &Listener{
		cfg:     cfg,
		log:     cfg.Log,
		bound:   make(chan struct{}),
		conns:   map[caller]map[*conn]struct{}{},
		stopped: make(chan struct{}),
		dec: &decisions{consul: cfg.Consul, target: cfg.Service, timeout: cfg.AuthorizeTimeout,
			log: cfg.Log, now: time.Now, entries: map[caller]*entry{}},
	}
	l.base, l.cancel = context.WithCancel(context.Background())
	l.tls = cfg.TLS.ServerConfig(l.authorize)
	return l, nil
}

// errDenied marks a refusal by intentions.
var errDenied = errors.New("denied by intentions")

// authorize is the handshake's authorization hook.
func (l *Listener) authorize(ctx context.Context, p certs.Peer) error {
	dec, err := l.dec.decide(ctx, caller{uri: p.URI, serial: p.Serial}, l.cfg.DecisionTTL)
	if err != nil {
		return err
	}
	if !dec.allowed {
		return fmt.Errorf("%w: %s to %s: %s", errDenied, p.ID.Service, l.cfg.Service, dec.reason)
	}
	return nil
}

// Bound is closed once the listener's socket is bound, so that a caller
// (or a test) never has to retry or sleep.
func (l *Listener) Bound() <-chan struct{} { return l.bound }

// Addr returns the bound address, or nil before Bound.
func (l *Listener) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Serve listens and accepts until ctx ends or Shutdown is called.
// Connections it accepted live on until Shutdown.
func (l *Listener) Serve(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", l.cfg.Listen)
	if err != nil {
		return fmt.Errorf("inbound: listening on %s: %w", l.cfg.Listen, err)
	}
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		ln.Close()
		return nil
	}
	l.ln = ln
	l.mu.Unlock()
	close(l.bound)
	l.log.Info("inbound: listening", "addr", ln.Addr().String(), "app", l.cfg.App, "service", l.cfg.Service)

	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			ln.Close()
		case <-stop:
		}
	}()
	go l.recheckLoop(stop)

	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || l.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Error("inbound: accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		l.wg.Add(1)
		go l.handle(c)
	}
}

func (l *Listener) isClosing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing
}

// Shutdown stops accepting, waits for live connections to end until ctx
// is done, then closes those left. It returns ctx's error when it had to.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.closing = true
	if l.ln != nil {
		l.ln.Close()
	}
	l.mu.Unlock()
	l.stopOnce.Do(func() { close(l.stopped) })
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		l.cancel()
		return nil
	case <-ctx.Done():
	}
	l.cancel()
	for _, c := range l.live(nil) {
		c.close("shutting down")
	}
	<-done
	return ctx.Err()
}

// live returns the open connections, of one caller or (nil) of all.
func (l *Listener) live(of *caller) []*conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*conn
	for k, set := range l.conns {
		if of != nil && k != *of {
			continue
		}
		for c := range set {
			out = append(out, c)
		}
	}
	return out
}

// recheckLoop authorizes the callers of open connections again every
// Recheck and closes the connections of callers now denied. Consul's own
// proxies decide only at the handshake (consul#5277); without this, a
// deny would not reach a caller that keeps its connection open.
func (l *Listener) recheckLoop(stop <-chan struct{}) {
	t := time.NewTicker(l.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-l.stopped:
			return
		case <-t.C:
		}
		l.mu.Lock()
		callers := make(map[caller]bool, len(l.conns))
		for k := range l.conns {
			callers[k] = true
		}
		l.mu.Unlock()
		var wg sync.WaitGroup
		for k := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dec, err := l.dec.decide(l.base, k, l.cfg.DecisionTTL)
				if err != nil || dec.allowed {
					return // without an answer, open connections stay
				}
				for _, c := range l.live(&k) {
					l.log.Warn("inbound: closing a connection that intentions now deny",
						"from", c.remote, "peer", k.uri, "serial", k.serial, "reason", dec.reason, "open_for", time.Since(c.start).Round(time.Millisecond))
					c.close("denied")
				}
			}()
		}
		wg.Wait()
		l.dec.forget(callers, time.Minute)
	}
}

// conn is one caller's connection and its connection to the app.
type conn struct {
	client    *tls.Conn
	app       net.Conn
	remote    string
	start     time.Time
	closeOnce sync.Once
	why       string
}

func (c *conn) close(why string) {
	c.closeOnce.Do(func() {
		c.why = why
		c.client.Close()
		if c.app != nil {
			c.app.Close()
		}
	})
}

func (l *Listener) track(k caller, c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing && l.base.Err() != nil {
		return false
	}
	set := l.conns[k]
	if set == nil {
		set = map[*conn]struct{}{}
		l.conns[k] = set
	}
	set[c] = struct{}{}
	return true
}

func (l *Listener) untrack(k caller, c *conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns[k], c)
	if len(l.conns[k]) == 0 {
		delete(l.conns, k)
	}
}

// handle runs one connection: handshake (with authorization), a
// connection to the app, then bytes both ways.
func (l *Listener) handle(raw net.Conn) {
	defer l.wg.Done()
	remote := raw.RemoteAddr().String()
	tc := tls.Server(raw, l.tls)
	hctx, cancel := context.WithTimeout(l.base, l.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		l.refused(remote, tc.ConnectionState(), err)
		raw.Close()
		return
	}
	cs := tc.ConnectionState()
	leaf := cs.PeerCertificates[0] // VerifyConnection made sure there is one, with one URI
	k := caller{uri: leaf.URIs[0].String(), serial: certs.SerialString(leaf.SerialNumber)}
	c := &conn{client: tc, remote: remote, start: time.Now()}
	if !l.track(k, c) {
		tc.Close()
		return
	}
	defer l.untrack(k, c)

	d := net.Dialer{Timeout: l.cfg.DialTimeout}
	app, err := d.DialContext(l.base, "tcp", l.cfg.App)
	if err != nil {
		l.log.Warn("inbound: app unreachable, closing the caller's connection", "from", remote, "peer", k.uri, "app", l.cfg.App, "err", err)
		tc.Close()
		return
	}
	c.app = app
	if l.base.Err() != nil { // a forced shutdown raced with the dial
		c.close("shutting down")
	}
	l.log.Debug("inbound: connection", "from", remote, "peer", k.uri, "resumed", cs.DidResume)
	pipe(tc, app)
	c.close("done")
}

// refused logs a handshake that did not pass, with what is known of the
// peer.
func (l *Listener) refused(remote string, cs tls.ConnectionState, err error) {
	peer := "none"
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		peer = "subject=" + leaf.Subject.String()
		if len(leaf.URIs) > 0 {
			peer = leaf.URIs[0].String()
		}
	}
	reason := "tls"
	switch {
	case errors.Is(err, errDenied):
		reason = "intentions"
	case errors.Is(err, certs.ErrNotReady):
		reason = "not-ready"
	case errors.Is(err, errConsul):
		reason = "consul"
	case errors.Is(err, io.EOF):
		reason = "closed-before-handshake"
	case errors.Is(err, context.DeadlineExceeded):
		reason = "handshake-timeout"
	}
	l.log.Warn("inbound: refused", "from", remote, "peer", peer, "reason", reason, "err", err)
}

// pipe copies both ways. A side that ends its stream (EOF, a TLS
// close_notify) half-closes the other, so protocols that shut down their
// writing side first work; an error on either side ends both.
func pipe(client *tls.Conn, app net.Conn) {
	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(app, client)
		if err == nil {
			if cw, ok := app.(interface{ CloseWrite() error }); ok {
				err = cw.CloseWrite()
			}
		}
		errc <- err
	}()
	go func() {
		_, err := io.Copy(client, app)
		if err == nil {
			err = client.CloseWrite() // close_notify
			if tcp, ok := client.NetConn().(interface{ CloseWrite() error }); ok && err == nil {
				err = tcp.CloseWrite()
			}
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		client.Close()
		app.Close()
	}
	<-errc
}
