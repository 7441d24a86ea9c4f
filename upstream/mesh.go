package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
)

// Mesh watches Consul and proxies the app's connections to the instances
// of the services they are for.
type Mesh struct {
	cfg     Config
	log     *slog.Logger
	health  healthSource
	catalog *catalogWatch

	proxy     *httputil.ReverseProxy
	server    *http.Server
	listener  *connListener
	startHTTP sync.Once
	conns     *connSet
	bufs      *bufferPool
	state     *stateStore // nil without Config.StateDir
	h1conns   sync.Pool   // *h1conn, the forwarder's per-connection state
	upPools   *upPools    // the forwarder's connections to instances

	mu       sync.Mutex
	watches  map[string]*serviceWatch
	runCtx   context.Context // set while Run runs
	runDone  bool
	watchers sync.WaitGroup
}

// New checks cfg and returns a Mesh; nothing runs until Run and ServeConn.
func New(cfg Config) (*Mesh, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Mesh{
		cfg:      cfg,
		log:      cfg.Logger,
		health:   cfg.Consul.Health(),
		catalog:  &catalogWatch{source: cfg.Consul.Catalog(), waitTime: cfg.WaitTime},
		listener: newConnListener(),
		conns:    newConnSet(),
		bufs:     newBufferPool(32 << 10),
		watches:  make(map[string]*serviceWatch),
		upPools:  newUpPools(cfg.Dialer),
	}
	m.h1conns.New = m.newH1conn
	if cfg.StateDir != "" {
		if m.state, err = openState(cfg.StateDir, cfg.StateID, cfg.Logger); err != nil {
			return nil, err
		}
		m.loadState()
	}
	m.proxy = m.newReverseProxy()
	m.server = &http.Server{
		Handler: http.HandlerFunc(m.serveHTTP),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*servedConn); ok {
				return context.WithValue(ctx, targetKey{}, sc.target)
			}
			return ctx
		},
		// The app's idle keep-alive connections cost a goroutine each; an
		// hour is long enough that no well-behaved client notices.
		IdleTimeout:    appIdleTimeout,
		MaxHeaderBytes: maxHeadSize, // as the forwarder's limit
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return m, nil
}

// Run watches the Consul catalog until ctx is done; the health watches
// started by Watch run until then too. It returns once all have stopped.
func (m *Mesh) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil || m.runDone {
		m.mu.Unlock()
		return errors.New("upstream: Run called twice")
	}
	m.runCtx = ctx
	for _, w := range m.watches {
		m.startWatchLocked(w)
	}
	m.mu.Unlock()

	stateDone := make(chan struct{})
	go func() {
		defer close(stateDone)
		m.state.run(ctx, m.stateSnapshot)
	}()
	m.catalog.run(ctx, m)
	<-stateDone

	m.mu.Lock()
	m.runDone = true
	m.mu.Unlock()
	m.watchers.Wait()
	return nil
}

// CatalogReady reports whether the Consul catalog has answered at least
// once; if not, reason says why (the last error, or that none came yet).
func (m *Mesh) CatalogReady() (ok bool, reason string) {
	return m.catalog.ready()
}

// ServiceExists reports whether the last good catalog answer lists the
// service (names are case-insensitive). It fails while the catalog has
// never answered, so callers can tell "no such service" from "don't know".
func (m *Mesh) ServiceExists(name string) (bool, error) {
	return m.catalog.exists(name)
}

// ServiceNames returns the lower-cased service names of the last good
// catalog answer, sorted; nil before the first one.
func (m *Mesh) ServiceNames() []string {
	return m.catalog.names()
}

// Watch starts the health watch of a service unless it runs already. It
// is cheap to call for every connection. A watch runs until Run's ctx is
// done; one asked for before Run starts with Run.
func (m *Mesh) Watch(name string) {
	m.watch(name)
}

func (m *Mesh) watch(name string) *serviceWatch {
	name = strings.ToLower(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.watches[name]; ok {
		return w
	}
	w := newServiceWatch(name)
	m.watches[name] = w
	m.startWatchLocked(w)
	return w
}

// startWatchLocked starts w's loop if Run is running; m.mu is held.
func (m *Mesh) startWatchLocked(w *serviceWatch) {
	if m.runCtx == nil || m.runDone {
		return
	}
	ctx := m.runCtx
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		w.run(ctx, m)
	}()
}

// Endpoints returns the current healthy instances of a service, nil if it
// is not watched. The caller must not modify their Tags and Meta.
func (m *Mesh) Endpoints(name string) []Endpoint {
	m.mu.Lock()
	w := m.watches[strings.ToLower(name)]
	m.mu.Unlock()
	if w == nil {
		return nil
	}
	if v := w.view.Load(); v != nil {
		return v.passing.Endpoints()
	}
	return nil
}

// PolicyOf returns the policy a watched service is routed with, once its
// instances are known.
func (m *Mesh) PolicyOf(name string) (Policy, bool) {
	w := m.watchOf(strings.ToLower(name))
	if w == nil {
		return Policy{}, false
	}
	v := w.view.Load()
	if v == nil {
		return Policy{}, false
	}
	return v.policy, true
}

// watchedNames returns the names of the services watched, unsorted.
func (m *Mesh) watchedNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.watches))
	for name := range m.watches {
		names = append(names, name)
	}
	return names
}

func (m *Mesh) watchOf(name string) *serviceWatch {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.watches[name]
}

// ServeConn proxies one connection the app made to service and returns
// when it is done. host is the name the app used to reach the service
// ("web.local"), sent as Host for requests that have none. HTTP/1.x is
// proxied per request, anything else per connection. ServeConn closes
// conn, also when ctx ends.
func (m *Mesh) ServeConn(ctx context.Context, conn net.Conn, service string, host string) {
	if service == "" {
		m.log.Warn("dropping a connection for no service", "from", conn.RemoteAddr())
		conn.Close()
		return
	}
	live := newLiveConn(conn)
	if !m.conns.add(live) {
		conn.Close()
		return
	}
	defer m.conns.remove(live)
	stop := context.AfterFunc(ctx, live.Close)
	defer stop()

	w := m.watch(service)
	proto, peeked, err := sniff(conn, m.cfg.SniffTimeout)
	if err != nil {
		m.log.Debug("dropping connection", "service", w.name, "from", conn.RemoteAddr(), "err", err)
		conn.Close()
		return
	}
	if proto == protoTCP {
		m.serveTCP(ctx, live, conn, peeked, w)
		return
	}
	m.serveH1(ctx, live, conn, peeked, &connTarget{watch: w, host: host})
}

// handToHTTP serves conn with the net/http path (http.Server, ReverseProxy)
// until it is done; peeked are bytes already read from it, replayed first.
func (m *Mesh) handToHTTP(ctx context.Context, conn net.Conn, peeked []byte, t *connTarget) {
	m.startHTTP.Do(func() {
		go func() {
			if err := m.server.Serve(m.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				m.log.Error("internal http server stopped", "err", err)
			}
		}()
	})
	sc := &servedConn{
		Conn:   &peekedConn{Conn: conn, peeked: peeked},
		target: t,
		done:   make(chan struct{}),
	}
	if !m.listener.hand(ctx, sc) {
		sc.Close()
		return
	}
	<-sc.done
}

// Shutdown stops taking connections, lets requests in flight and raw
// connections finish until ctx ends, then closes whatever is left. Idle
// keep-alive connections are closed at once.
func (m *Mesh) Shutdown(ctx context.Context) error {
	drained := m.conns.drain()
	m.upPools.close()
	err := m.server.Shutdown(ctx)
	m.listener.Close()
	if err == nil {
		select {
		case <-drained:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		m.server.Close()
		m.conns.closeAll()
		return fmt.Errorf("draining proxied connections: %w", err)
	}
	return nil
}
