package upstream

import (
	"context"
	"errors"
	"fmt"
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
	names  map[string]struct{} // lower-cased
	sorted []string
}

// catalogWatch keeps the service names of the last good catalog answer.
type catalogWatch struct {
	source   catalogSource
	waitTime time.Duration
	current  atomic.Pointer[catalogSnapshot]
	lastErr  atomic.Pointer[error]
}

func (c *catalogWatch) run(ctx context.Context, m *Mesh) {
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
		apply:   c.apply,
		failed:  func(err error) { c.lastErr.Store(&err) },
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

func (c *catalogWatch) apply(services map[string][]string) {
	snap := &catalogSnapshot{names: make(map[string]struct{}, len(services))}
	for name := range services {
		snap.names[strings.ToLower(name)] = struct{}{}
	}
	for name := range snap.names {
		snap.sorted = append(snap.sorted, name)
	}
	slices.Sort(snap.sorted)
	c.current.Store(snap)
	c.lastErr.Store(nil)
}

// ready reports whether the catalog has answered, and if not, why.
func (c *catalogWatch) ready() (bool, string) {
	if c.current.Load() != nil {
		return true, ""
	}
	if err := c.lastErr.Load(); err != nil {
		return false, (*err).Error()
	}
	return false, "waiting for the first answer of the consul catalog"
}

// exists reports whether the last good answer listed name.
func (c *catalogWatch) exists(name string) (bool, error) {
	snap := c.current.Load()
	if snap == nil {
		_, why := c.ready()
		return false, errors.New("consul catalog has not answered yet: " + why)
	}
	_, ok := snap.names[strings.ToLower(name)]
	return ok, nil
}

// names returns the sorted service names of the last good answer.
func (c *catalogWatch) names() []string {
	snap := c.current.Load()
	if snap == nil {
		return nil
	}
	return slices.Clone(snap.sorted)
}
