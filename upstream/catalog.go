package upstream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/consulerr"
)

// catalogSource is the part of Consul's catalog API the catalog watch
// needs; *api.Catalog has it.
type catalogSource interface {
	Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error)
}

// catalogSnapshot is the set of service names of one catalog answer.
type catalogSnapshot struct {
	names    map[string]struct{} // lower-cased
	sorted   []string
	fromDisk bool // from the state file; Consul has not answered in this run
	// tags are the tags of each service's instances, lower-cased; nil
	// when from the state file, which keeps none (subset.go).
	tags map[string]map[string]struct{}
}

// catalogWatch keeps the service names of the last good catalog answer.
// As the one watch that always runs, it also tells the mesh whether Consul
// is reachable, and logs when meshlet routes on its last good answers
// (fail-static).
type catalogWatch struct {
	source   catalogSource
	waitTime time.Duration
	current  atomic.Pointer[catalogSnapshot]
	lastErr  atomic.Pointer[error]
	// failingSince is when Consul last answered before the current
	// failure streak (unix ns), or when the state file was last confirmed;
	// 0 while Consul answers.
	failingSince atomic.Int64
	// live notices a Consul that hangs, for every watch of the mesh.
	live liveness
	// demand is the state of CatalogOnDemand; nil in CatalogWatch.
	demand       *onDemand
	refreshEvery time.Duration

	// settle keeps the names known before an outage while Consul, having
	// lost its state, has not yet seen their instances register again.
	settleMu     sync.Mutex
	settleUntil  time.Time
	beforeOutage map[string]struct{} // names of the last answer before the current outage
}

// failStaticReminder is how often the log repeats that Consul is still away.
const failStaticReminder = time.Minute

// catalogQuery names the catalog watch's query in logs and Status.
const catalogQuery = "catalog services"

// statusSource is the question the liveness check asks; *api.Status has it.
type statusSource interface {
	LeaderWithQueryOptions(q *api.QueryOptions) (string, error)
}

func (c *catalogWatch) run(ctx context.Context, m *Mesh) {
	status := statusSource(m.cfg.Consul.Status())
	pingDone := make(chan struct{})
	go func() {
		defer close(pingDone)
		var changed func(error)
		if c.demand != nil {
			changed = func(down error) { c.livenessChanged(down, m) }
		}
		c.live.run(ctx, func(ctx context.Context) error {
			_, err := status.LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			return err
		}, m.cfg.PingEvery, m.cfg.CallTimeout, m.log, changed)
	}()
	defer func() { <-pingDone }()
	if c.demand != nil {
		c.runOnDemand(ctx, m)
		return
	}
	var cached bool // the last answer came from the agent's cache
	q := &blockingQuery[map[string][]string]{
		what: catalogQuery,
		fetch: func(ctx context.Context, waitIndex uint64) (map[string][]string, uint64, error) {
			opts := m.cfg.QueryMode.options(true, waitIndex, c.waitTime).WithContext(ctx)
			cached = opts.UseCache
			services, meta, err := c.source.Services(opts)
			if err == nil {
				err = c.live.cachedAnswer(opts, meta)
			}
			if err != nil {
				return nil, 0, fmt.Errorf("listing services in the consul catalog: %w", consulerr.Explain(err))
			}
			m.acl.note(catalogQuery, meta.ResultsFilteredByACLs, `service:read on some services (DNS knows only the names it may read; service_prefix "" { policy = "read" } shows all)`, false, m.log)
			return services, meta.LastIndex, nil
		},
		waitTime:    c.waitTime,
		callTimeout: m.cfg.CallTimeout,
		live:        &c.live,
		fromCache:   func() bool { return cached },
		answered:    func(int) { c.answeredAgain(m) },
		lostState:   func() { c.lostState(m) },
		apply:       func(services map[string][]string) { c.apply(services, m) },
		failed: func(err error, _ int) {
			m.watchErrors.Add(1)
			c.lastErr.Store(&err)
			c.failed(catalogQuery, err, m)
		},
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

func (c *catalogWatch) failed(what string, err error, m *Mesh) {
	now := time.Now()
	if c.failingSince.CompareAndSwap(0, c.live.since(now)) {
		c.settleMu.Lock()
		if cur := c.current.Load(); cur != nil && !cur.fromDisk {
			c.beforeOutage = cur.names
		}
		c.settleMu.Unlock()
	}
	m.outage.failed(what, err, time.Unix(0, c.live.since(now)), c.current.Load() != nil, m.log)
}

func (c *catalogWatch) answeredAgain(m *Mesh) {
	if since := c.failingSince.Swap(0); since != 0 && c.current.Load() != nil {
		// The saved state says when Consul last confirmed it: that is now,
		// even when its answer is the same as before the outage.
		m.state.changed()
	}
	c.lastErr.Store(nil)
	m.outage.answered(catalogQuery, m.log)
}

// lostState starts the settle time: an index went backwards after an
// outage (the catalog's or a service's), so Consul lost its state (a
// restarted dev agent, a snapshot restore) and may not list for a while
// the services whose instances will register again. A leader election or
// a partition loses nothing, and starts nothing.
func (c *catalogWatch) lostState(m *Mesh) {
	if m.cfg.SettleTime <= 0 {
		return
	}
	c.settleMu.Lock()
	defer c.settleMu.Unlock()
	first := !time.Now().Before(c.settleUntil)
	c.settleUntil = time.Now().Add(m.cfg.SettleTime)
	before := c.beforeOutage
	if first {
		m.log.Info("consul lost its state (an index went backwards after an outage): keeping the services known before while they register again",
			"settle", m.cfg.SettleTime)
	}
	if cur := c.current.Load(); cur != nil && len(before) > 0 {
		names := maps.Clone(cur.names)
		maps.Copy(names, before)
		if !maps.Equal(names, cur.names) {
			c.store(names, cur.fromDisk)
		}
	}
}

func (c *catalogWatch) apply(services map[string][]string, m *Mesh) {
	names := make(map[string]struct{}, len(services))
	for name := range services {
		names[strings.ToLower(name)] = struct{}{}
	}
	// Right after an outage, a Consul that lost its state (a dev agent)
	// may not list services whose instances will register again soon:
	// keep the names known before for the settle time.
	tags := catalogTags(services)
	// settleMu orders this with lostState, which merges names from
	// another goroutine.
	c.settleMu.Lock()
	defer c.settleMu.Unlock()
	settling := time.Now().Before(c.settleUntil)
	if old := c.current.Load(); old != nil && settling {
		for name := range old.names {
			names[name] = struct{}{}
		}
		mergeTags(tags, old.tags)
	}
	if old := c.current.Load(); old == nil || old.fromDisk || !maps.Equal(old.names, names) || !tagsEqual(old.tags, tags) {
		c.storeTags(names, tags, false)
		m.state.changed()
	}
}

// store swaps in a snapshot of names.
func (c *catalogWatch) store(names map[string]struct{}, fromDisk bool) {
	c.storeTags(names, nil, fromDisk)
}

// storeTags swaps in a snapshot of names with their tags.
func (c *catalogWatch) storeTags(names map[string]struct{}, tags map[string]map[string]struct{}, fromDisk bool) {
	snap := &catalogSnapshot{names: names, fromDisk: fromDisk, tags: tags}
	for name := range snap.names {
		snap.sorted = append(snap.sorted, name)
	}
	slices.Sort(snap.sorted)
	c.current.Store(snap)
}

// ready reports whether the catalog has answered, and if not, why. A
// saved state stands in for an answer only once Consul has failed: a
// Consul that is up answers within moments, and readiness should wait for
// its word rather than a file's. One that hangs fails the first query
// when its deadline (CallTimeout) passes.
func (c *catalogWatch) ready() (bool, string) {
	if c.usable(c.current.Load()) {
		return true, ""
	}
	if err := c.lastErr.Load(); err != nil {
		return false, (*err).Error()
	}
	return false, "waiting for the first answer of the consul catalog"
}

// usable reports whether snap may be answered from: any answer of Consul,
// or the saved state once Consul has failed.
func (c *catalogWatch) usable(snap *catalogSnapshot) bool {
	return snap != nil && (!snap.fromDisk || c.lastErr.Load() != nil)
}

// exists reports whether the last good answer listed name. In
// CatalogOnDemand a name it lacks may be ErrNotKnownYet (onDemand.lookup).
func (c *catalogWatch) exists(name string) (bool, error) {
	snap := c.current.Load()
	if !c.usable(snap) {
		_, why := c.ready()
		return false, errors.New("consul catalog has not answered yet: " + why)
	}
	name = strings.ToLower(name)
	if _, ok := snap.names[name]; ok || c.demand == nil {
		return ok, nil
	}
	return c.demand.lookup(name, c.refreshEvery)
}

// names returns the sorted service names of the last good answer.
func (c *catalogWatch) names() []string {
	snap := c.current.Load()
	if !c.usable(snap) {
		return nil
	}
	return slices.Clone(snap.sorted)
}
