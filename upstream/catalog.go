package upstream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
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

	// Owned by the watch's goroutine.
	settleUntil  time.Time
	lastReminder time.Time
}

// failStaticReminder is how often the log repeats that Consul is still away.
const failStaticReminder = time.Minute

// statusSource is the question the liveness check asks; *api.Status has it.
type statusSource interface {
	LeaderWithQueryOptions(q *api.QueryOptions) (string, error)
}

func (c *catalogWatch) run(ctx context.Context, m *Mesh) {
	status := statusSource(m.cfg.Consul.Status())
	pingDone := make(chan struct{})
	go func() {
		defer close(pingDone)
		c.live.run(ctx, func(ctx context.Context) error {
			_, err := status.LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			return err
		}, m.cfg.PingEvery, m.cfg.CallTimeout, m.log)
	}()
	defer func() { <-pingDone }()
	q := &blockingQuery[map[string][]string]{
		what: "catalog services",
		fetch: func(ctx context.Context, waitIndex uint64) (map[string][]string, uint64, error) {
			opts := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: c.waitTime}).WithContext(ctx)
			services, meta, err := c.source.Services(opts)
			if err != nil {
				return nil, 0, fmt.Errorf("listing services in the consul catalog: %w", err)
			}
			return services, meta.LastIndex, nil
		},
		waitTime:    c.waitTime,
		callTimeout: m.cfg.CallTimeout,
		live:        &c.live,
		answered:    func(afterFailures int) { c.answeredAgain(afterFailures, m) },
		apply:       func(services map[string][]string) { c.apply(services, m) },
		failed: func(err error, streak int) {
			m.watchErrors.Add(1)
			c.lastErr.Store(&err)
			c.failed(streak, m)
		},
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

func (c *catalogWatch) failed(streak int, m *Mesh) {
	now := time.Now()
	first := c.failingSince.CompareAndSwap(0, c.live.since(now))
	if c.current.Load() == nil {
		return // nothing to route on: readiness says why
	}
	since := time.Unix(0, c.failingSince.Load())
	switch {
	case first || streak == 1:
		m.log.Warn("consul unreachable: fail-static, routing on the last good instances until it answers again",
			"services", len(m.watchedNames()), "max_stale", maxStaleText(m.cfg.MaxStale))
		c.lastReminder = now
	case now.Sub(c.lastReminder) >= failStaticReminder:
		m.log.Warn("consul still unreachable: fail-static, routing on the last good instances",
			"for", now.Sub(since).Round(time.Second), "max_stale", maxStaleText(m.cfg.MaxStale))
		c.lastReminder = now
	}
}

func (c *catalogWatch) answeredAgain(afterFailures int, m *Mesh) {
	if since := c.failingSince.Swap(0); since != 0 && c.current.Load() != nil {
		m.log.Info("consul answers again: leaving fail-static",
			"outage", time.Since(time.Unix(0, since)).Round(time.Millisecond))
		// The saved state says when Consul last confirmed it: that is now,
		// even when its answer is the same as before the outage.
		m.state.changed()
	}
	c.lastErr.Store(nil)
	if afterFailures > 0 && m.cfg.SettleTime > 0 {
		c.settleUntil = time.Now().Add(m.cfg.SettleTime)
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
	if old := c.current.Load(); old != nil && time.Now().Before(c.settleUntil) {
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

// exists reports whether the last good answer listed name.
func (c *catalogWatch) exists(name string) (bool, error) {
	snap := c.current.Load()
	if !c.usable(snap) {
		_, why := c.ready()
		return false, errors.New("consul catalog has not answered yet: " + why)
	}
	_, ok := snap.names[strings.ToLower(name)]
	return ok, nil
}

// names returns the sorted service names of the last good answer.
func (c *catalogWatch) names() []string {
	snap := c.current.Load()
	if !c.usable(snap) {
		return nil
	}
	return slices.Clone(snap.sorted)
}
