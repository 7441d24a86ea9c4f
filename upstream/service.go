package upstream

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// healthSource is the part of Consul's health API a service watch needs;
// *api.Health has it.
type healthSource interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

// serviceWatch holds what the mesh knows of one service: its passing
// instances, swapped as a whole on every change, and its balancer.
type serviceWatch struct {
	name     string
	selector Selector
	set      atomic.Pointer[EndpointSet]

	// answered is closed once the first answer of Consul is in.
	answered     chan struct{}
	answeredOnce sync.Once
}

func newServiceWatch(name string, sel Selector) *serviceWatch {
	return &serviceWatch{name: name, selector: sel, answered: make(chan struct{})}
}

func (w *serviceWatch) run(ctx context.Context, m *Mesh) {
	q := &blockingQuery[[]*api.ServiceEntry]{
		what: fmt.Sprintf("health of %q", w.name),
		fetch: func(ctx context.Context, waitIndex uint64) ([]*api.ServiceEntry, uint64, error) {
			opts := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: m.cfg.WaitTime}).WithContext(ctx)
			entries, meta, err := m.health.Service(w.name, "", true, opts)
			if err != nil {
				return nil, 0, fmt.Errorf("asking consul for the passing instances of %q: %w", w.name, err)
			}
			return entries, meta.LastIndex, nil
		},
		apply: func(entries []*api.ServiceEntry) {
			eps, skipped := endpointsFromHealth(entries)
			if len(skipped) > 0 {
				m.log.Warn("ignoring instances without an address or port", "service", w.name, "ids", skipped)
			}
			w.update(newEndpointSet(eps), m)
		},
		failed:  func(error) {},
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

// update swaps in set unless it equals the current one.
func (w *serviceWatch) update(set *EndpointSet, m *Mesh) {
	old := w.set.Load()
	if old == nil || !old.equal(set) {
		w.set.Store(set)
		m.log.Debug("instances changed", "service", w.name, "count", set.Len())
	}
	w.answeredOnce.Do(func() { close(w.answered) })
}

// awaitFirstAnswer waits until Consul has answered for the service, at
// most timeout, and reports whether it has.
func (w *serviceWatch) awaitFirstAnswer(ctx context.Context, timeout time.Duration) bool {
	select {
	case <-w.answered:
		return true
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.answered:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}
