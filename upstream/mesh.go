package upstream

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mesh watches Consul and routes the app's requests and connections to
// the instances of the services they are for; the front-ends that speak
// their protocols ask it (pick.go, attempt.go).
type Mesh struct {
	cfg     Config
	log     *slog.Logger
	health  healthSource
	catalog *catalogWatch
	// outage is whether every watch gets answers, for fail-static.
	outage outage
	// acl notes the answers Consul's ACLs cut short.
	acl   aclHidden
	state *stateStore // nil without Config.StateDir
	// watchErrors counts failed queries of the catalog and health watches.
	watchErrors atomic.Uint64
	created     time.Time
	mtls        mtlsState // connect.go

	mu       sync.Mutex
	watches  map[string]*serviceWatch
	runCtx   context.Context // set while Run runs
	runDone  bool
	watchers sync.WaitGroup
}

// New checks cfg and returns a Mesh; nothing runs until Run.
func New(cfg Config) (*Mesh, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Mesh{
		cfg:     cfg,
		log:     cfg.Logger,
		health:  cfg.Consul.Health(),
		catalog: &catalogWatch{source: cfg.Consul.Catalog(), waitTime: cfg.WaitTime, refreshEvery: cfg.CatalogRefreshEvery},
		watches: make(map[string]*serviceWatch),
		created: time.Now(),
	}
	if cfg.Catalog == CatalogOnDemand {
		m.catalog.demand = newOnDemand()
	}
	m.mtls.on = cfg.MTLS != MTLSOff
	m.mtls.watching = m.mtls.on && cfg.ClientTLS != nil
	if cfg.StateDir != "" {
		if m.state, err = openState(cfg.StateDir, cfg.StateID, cfg.Logger); err != nil {
			return nil, err
		}
		m.loadState()
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
	identityDone := make(chan struct{})
	go func() {
		defer close(identityDone)
		m.awaitIdentity(ctx)
	}()
	m.catalog.run(ctx, m)
	<-stateDone
	<-identityDone

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
// never answered, so callers can tell "no such service" from "don't know";
// in CatalogOnDemand it fails with ErrNotKnownYet for a name the last
// answer lacks until the catalog is asked again (AwaitName waits for it).
func (m *Mesh) ServiceExists(name string) (bool, error) {
	ok, err := m.catalog.exists(name)
	if m.catalog.demand == nil || err != nil && !errors.Is(err, ErrNotKnownYet) {
		return ok, err
	}
	// A watched service's own answers may be newer than the catalog's
	// last: it may have registered since, or left.
	w := m.watchOf(strings.ToLower(name))
	switch {
	case w == nil:
		return ok, err
	case len(w.registered()) > 0:
		return true, nil
	case ok:
		if at := w.emptySince.Load(); at != 0 {
			if err := m.catalog.demand.recheck(strings.ToLower(name), at); err != nil {
				return false, err
			}
		}
	}
	return ok, err
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
	if tag, service, ok := splitSubset(name); ok {
		return m.subsetWatch(name, tag, service)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.watches[name]; ok {
		return w
	}
	w := newServiceWatch(name)
	w.metrics = m.cfg.Metrics.Service(name)
	w.hosts.metrics = w.metrics
	m.watches[name] = w
	m.startWatchLocked(w)
	return w
}

// startWatchLocked starts w's loop if Run is running; m.mu is held.
func (m *Mesh) startWatchLocked(w *serviceWatch) {
	if m.runCtx == nil || m.runDone || w.sub.parent != nil { // a subset's service watch feeds it
		return
	}
	ctx := m.runCtx
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		w.run(ctx, m)
	}()
	m.startConnectWatchesLocked(ctx, w)
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

// Logger is where the mesh logs (Config.Logger), for its front-ends.
func (m *Mesh) Logger() *slog.Logger { return m.log }

// ConsecutiveFailures returns how many times in a row the instance with
// the given service ID has failed for passive health, as the current
// view of a watched service has it (0 if unknown): for diagnostics and
// the front-ends' tests.
func (m *Mesh) ConsecutiveFailures(service, id string) int64 {
	w := m.watchOf(strings.ToLower(service))
	if w == nil {
		return 0
	}
	v := w.view.Load()
	if v == nil {
		return 0
	}
	for _, set := range []*EndpointSet{v.passing, v.all} {
		for i := range set.Len() {
			if set.At(i).ID == id {
				return set.hosts[i].failures.Load()
			}
		}
	}
	return 0
}
