package upstream

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/consulerr"
	"github.com/meshlet/meshlet/metrics"
)

// healthSource is the part of Consul's health API a service watch needs;
// *api.Health has it.
type healthSource interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

// serviceWatch holds what the mesh knows of one service: the view it
// routes on, swapped as a whole on every change, its balancers, its retry
// budget and the runtime state of its instances.
type serviceWatch struct {
	name   string
	rr     RoundRobin
	lr     LeastRequest
	view   atomic.Pointer[serviceView]
	budget retryBudget
	hosts  hostRegistry
	logs   serviceLogs
	// metrics are the service's series, resolved once (nil: none).
	metrics *metrics.Service
	// connect is the instances' mTLS and the intentions toward the
	// service (connect.go, intentions.go).
	connect connectState
	// sub links a service with its tag subsets (subset.go).
	sub subsetLink

	// answered is closed once requests need not wait for Consul: at its
	// first answer, or at its first failure when the state file gave a view.
	answered     chan struct{}
	answeredOnce sync.Once
	// failingSince is when Consul last answered before the current
	// failure streak (unix ns), or when the state file's data was last
	// confirmed; 0 while Consul answers.
	failingSince atomic.Int64
	staleLogged  atomic.Bool
	// emptySince is when Consul's answers began to list no instance of
	// the service (unix ns; 0 while they list some): for CatalogOnDemand,
	// which asks the catalog again before it denies the name.
	emptySince atomic.Int64

	// Owned by the watch's goroutine (and by the state loader before Run).
	mu            sync.Mutex
	lastEndpoints []Endpoint // every registered instance of the last answer
	lastGood      []Endpoint // passing instances of the last answer that had any
	outageBase    []Endpoint // instances that passed before Consul reset their checks (see settle)
	settleUntil   time.Time
	settleChanged bool // outageBase changed since the view was built
	lastProblems  string
}

func newServiceWatch(name string) *serviceWatch {
	return &serviceWatch{name: name, answered: make(chan struct{})}
}

// selector returns the balancer the policy asks for.
func (w *serviceWatch) selector(p *Policy) Selector {
	if p.Balance == BalanceLeastRequest {
		return w.lr
	}
	return &w.rr
}

func (w *serviceWatch) run(ctx context.Context, m *Mesh) {
	what := fmt.Sprintf("health of %q", w.name)
	lostState := false // told by the query, used by the next apply
	cached := false    // the last answer came from the agent's cache
	q := &blockingQuery[[]*api.ServiceEntry]{
		what: what,
		fetch: func(ctx context.Context, waitIndex uint64) ([]*api.ServiceEntry, uint64, error) {
			opts := m.cfg.QueryMode.options(false, waitIndex, m.cfg.WaitTime).WithContext(ctx)
			cached = opts.UseCache
			// Every registered instance, not only passing ones: panic
			// routing needs them, and a 503 can say they are all critical.
			entries, meta, err := m.health.Service(w.name, "", false, opts)
			if err == nil {
				err = m.catalog.live.cachedAnswer(opts, meta)
			}
			if err != nil {
				return nil, 0, fmt.Errorf("asking consul for the instances of %q: %w", w.name, consulerr.Explain(err))
			}
			m.acl.note(what, meta.ResultsFilteredByACLs, fmt.Sprintf("service:read on %q or node:read on its instances' nodes", w.name), true, m.log)
			return entries, meta.LastIndex, nil
		},
		waitTime:    m.cfg.WaitTime,
		callTimeout: m.cfg.CallTimeout,
		live:        &m.catalog.live,
		fromCache:   func() bool { return cached },
		answered:    func(int) { w.answeredAgain(what, m) },
		lostState: func() {
			lostState = true
			m.catalog.lostState(m)
		},
		apply: func(entries []*api.ServiceEntry) {
			if len(entries) > 0 {
				w.emptySince.Store(0)
			} else {
				w.emptySince.CompareAndSwap(0, time.Now().UnixNano())
			}
			eps, skipped := endpointsFromHealth(entries)
			if len(skipped) > 0 {
				m.log.Warn("ignoring instances without an address or port", "service", w.name, "ids", skipped)
			}
			w.settle(entries, lostState, m)
			lostState = false
			w.update(eps, m, false)
		},
		failed: func(err error, _ int) {
			m.watchErrors.Add(1)
			since := m.catalog.live.since(time.Now())
			w.failed(since)
			m.outage.failed(what, err, time.Unix(0, since), w.view.Load() != nil, m.log)
		},
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

// answeredAgain runs on every good answer, before apply.
func (w *serviceWatch) answeredAgain(what string, m *Mesh) {
	for _, c := range w.subsets() {
		c.failingSince.Store(0)
		c.staleLogged.Store(false)
	}
	w.failingSince.Store(0)
	w.staleLogged.Store(false)
	m.outage.answered(what, m.log)
}

// failed runs on every failed query; since is when Consul last answered
// (unix ns). It releases requests waiting for a first answer when the state file gave
// something to route on. Every query has a deadline, so a first query
// that Consul never answers fails too and holds no request longer than
// CallTimeout.
func (w *serviceWatch) failed(since int64) {
	defer w.subsetsFailed(since)
	w.failingSince.CompareAndSwap(0, since)
	if w.view.Load() != nil {
		w.answeredOnce.Do(func() { close(w.answered) })
	}
}

// update builds and swaps in the view of eps, unless they equal the last
// ones and no outage is settling. fromDisk marks instances from the state
// file, which are no answer of Consul: they neither release waiting
// requests nor need saving.
func (w *serviceWatch) update(eps []Endpoint, m *Mesh, fromDisk bool) {
	w.mu.Lock()
	same, release := w.updateLocked(eps, m, fromDisk)
	w.mu.Unlock()
	w.updated(m, fromDisk, same, release)
}

// updateLocked is update's part under w.mu, which the caller holds: it
// builds and swaps in the view and reports whether it stayed the same and
// whether requests may be released. A rebuild on connect.raw (setSidecars,
// connectSettled, reroute) reads and applies it in one critical section,
// so a newer health answer cannot be overwritten by an older list. The
// caller then calls updated, without w.mu.
func (w *serviceWatch) updateLocked(eps []Endpoint, m *Mesh, fromDisk bool) (same, release bool) {
	now := time.Now()
	// A subset's instances come from its service's view, which that
	// service's connect watch overlaid already: Dial finds their sidecars
	// under the service's watch (setDests), with the service's identity
	// and intentions, not the subset's name. Nor does a subset release
	// requests itself: its service does, once its connect watch answered
	// too (releaseAnswered).
	if w.sub.parent == nil {
		eps, release = w.connectOverlay(eps, m, fromDisk)
	} else {
		w.subsetNoMTLS(eps, m)
	}
	old := w.view.Load()
	same = old != nil && endpointsEqual(sortedCopy(eps), w.lastEndpoints) && !now.Before(w.settleUntil) && !w.settleChanged &&
		old.noMTLS == w.connect.why && !w.policyChanged()
	if !same {
		w.settleChanged = false
		w.readmit(eps)
		v := w.buildView(eps, m, now)
		v.noMTLS = w.connect.why
		v.hasMTLS = slices.ContainsFunc(eps, func(e Endpoint) bool { return e.MTLS })
		w.lastEndpoints = sortedCopy(eps)
		w.view.Store(v)
		m.log.Debug("instances changed", "service", w.name, "registered", v.all.Len(), "passing", v.passing.Len(),
			"settling", v.settle.Len(), "policy", v.policy.Balance, "sticky", v.policy.Sticky)
	}
	return same, release
}

// updated finishes an update after w.mu is released: it feeds the
// subsets, marks the state to save and releases waiting requests.
func (w *serviceWatch) updated(m *Mesh, fromDisk, same, release bool) {
	w.pushSubsets(m, fromDisk)
	if !fromDisk {
		if !same {
			m.state.changed()
		}
		if release {
			w.releaseAnswered()
		}
	}
}

// releaseAnswered lets the requests that wait for the service's first
// answer go, and those waiting for its subsets'. A subset made later
// finds its service's answered closed (subsetWatch).
func (w *serviceWatch) releaseAnswered() {
	w.answeredOnce.Do(func() { close(w.answered) })
	for _, c := range w.subsets() {
		c.answeredOnce.Do(func() { close(c.answered) })
	}
}

// readmit ends the passive-health ejection of the instances Consul shows
// passing again after they were not passing (or absent) in its previous
// answer: a check that passes again is fresher evidence than the failures
// that ejected them. Only a transition counts: an instance that passed
// throughout keeps its ejection, else passive health would be useless
// against one whose check passes while its traffic fails. w.mu is held.
func (w *serviceWatch) readmit(eps []Endpoint) {
	var before map[string]string
	for _, e := range eps {
		if e.Status != api.HealthPassing {
			continue
		}
		if before == nil {
			before = make(map[string]string, len(w.lastEndpoints))
			for _, p := range w.lastEndpoints {
				before[hostKey(p)] = p.Status
			}
		}
		if before[hostKey(e)] != api.HealthPassing {
			w.hosts.readmit(e)
		}
	}
}

func sortedCopy(eps []Endpoint) []Endpoint {
	c := slices.Clone(eps)
	sortByNodeID(c)
	return c
}

// registered returns every registered instance of the last answer.
func (w *serviceWatch) registered() []Endpoint {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastEndpoints
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

// staleness reports how long the service's view has gone without Consul
// confirming it, and whether that exceeds maxStale (0: no limit).
func (w *serviceWatch) staleness(now time.Time, maxStale time.Duration) (time.Duration, bool) {
	since := w.failingSince.Load()
	if since == 0 {
		return 0, false
	}
	age := time.Duration(now.UnixNano() - since)
	return age, maxStale > 0 && age > maxStale
}
