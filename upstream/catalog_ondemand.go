package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/internal/consulerr"
)

// CatalogMode is how the mesh learns which service names exist (for DNS,
// tag subsets and readiness).
type CatalogMode string

const (
	// CatalogWatch keeps a blocking query of /v1/catalog/services: every
	// sidecar's query is a request to the servers, woken by every
	// registration anywhere in the cluster (Consul's index is
	// cluster-wide), so the cost of one change grows with the number of
	// sidecars, whether or not they care (BENCHMARKS.md, "Consul at
	// scale"). The agent's cache cannot share it: see QueryCached.
	CatalogWatch CatalogMode = ""
	// CatalogOnDemand asks the catalog once at start, and again only when
	// a name (or tag subset) is asked that its last answer lacks, at
	// most refreshBurst times per CatalogRefreshEvery; names already
	// watched are known from their own health watches. A change costs
	// the servers nothing for the sidecars that do not watch the changed
	// service.
	CatalogOnDemand CatalogMode = "on-demand"
)

// ParseCatalogMode checks a catalog mode's name ("watch" is CatalogWatch).
func ParseCatalogMode(s string) (CatalogMode, error) {
	switch s {
	case "watch":
		return CatalogWatch, nil
	case string(CatalogOnDemand):
		return CatalogOnDemand, nil
	}
	return "", fmt.Errorf("consul catalog mode %q: want on-demand or watch", s)
}

// DefaultCatalogRefreshEvery is, in CatalogOnDemand, the period in which
// the catalog is asked at most refreshBurst times (what a flood of lookups
// of unknown names can cost Consul: 4 questions a second), and how long an
// answer that a name does not exist is trusted.
const DefaultCatalogRefreshEvery = time.Second

// refreshBurst questions may go at once, so that an app that starts and
// looks up a few new names one after the other waits for none but its own
// (one question of ~1 ms each, rather than up to a second for the period
// to end: TestDNSClients saw 771 ms with one question per period).
const refreshBurst = 4

// ErrNotKnownYet says that a name is in no catalog answer recent enough to
// deny it, and that the catalog is being asked again: AwaitName waits for
// that answer.
var ErrNotKnownYet = errors.New("not in the consul catalog's last answer; asking it again")

// maxPendingNames bounds the names remembered as asked and unknown; when
// full it starts over (a name forgotten is merely asked about again).
const maxPendingNames = 4096

// onDemand is the state of the catalog in CatalogOnDemand.
type onDemand struct {
	wanted chan struct{} // a refresh is asked for; cap 1

	mu sync.Mutex
	// asked holds when each name the last answers lacked was first asked
	// since: an answer denies a name only if its query started after that.
	asked map[string]time.Time
	// done is closed when the next refresh attempt to finish does.
	done chan struct{}
	// lastStart is when the last finished refresh attempt started.
	lastStart time.Time
	// starts are the starts of the last refreshBurst attempts, a ring
	// whose next slot is the oldest.
	starts [refreshBurst]time.Time
	next   int
	// answeredAt is when the query of the last good answer started (unix ns).
	answeredAt atomic.Int64
}

func newOnDemand() *onDemand {
	return &onDemand{wanted: make(chan struct{}, 1), asked: make(map[string]time.Time), done: make(chan struct{})}
}

// lookup answers for key (a name, or a "tag.service" subset) that the
// catalog's last answer lacks: it is denied only by an answer asked after
// the key was; otherwise a refresh is asked for and the error is
// ErrNotKnownYet.
func (o *onDemand) lookup(key string, every time.Duration) (bool, error) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.asked[key]
	switch {
	case !ok:
		o.askLocked(key, now)
	case o.lastStart.After(at) && now.Sub(o.lastStart) < every:
		return false, nil // denied by an answer asked after the name, and recent
	case o.lastStart.After(at):
		o.asked[key] = now // that denial is too old to trust: ask again
	}
	o.want()
	return false, ErrNotKnownYet
}

// recheck is lookup for a name the last answer lists but whose own watch
// has listed no instance since emptyAt (unix ns): deregistered since, or
// not. An answer asked after emptyAt tells; until one comes, the name is
// not known. A question that failed (an outage) leaves the last answer's
// word.
func (o *onDemand) recheck(key string, emptyAt int64) error {
	if o.answeredAt.Load() > emptyAt {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lastStart.UnixNano() > emptyAt {
		return nil
	}
	o.askLocked(key, time.Now())
	o.want()
	return ErrNotKnownYet
}

func (o *onDemand) askLocked(key string, now time.Time) {
	if len(o.asked) >= maxPendingNames {
		clear(o.asked)
	}
	o.asked[key] = now
}

// want asks the refresh loop for a question of the catalog.
func (o *onDemand) want() {
	select {
	case o.wanted <- struct{}{}:
	default:
	}
}

// attemptDone records the end of a refresh attempt that started at start,
// and wakes those waiting on it.
func (o *onDemand) attemptDone(start time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastStart = start
	o.starts[o.next] = start
	o.next = (o.next + 1) % refreshBurst
	for key, at := range o.asked {
		if at.Before(start.Add(-time.Minute)) { // long answered; asked again, it is asked anew
			delete(o.asked, key)
		}
	}
	close(o.done)
	o.done = make(chan struct{})
}

func (o *onDemand) doneChan() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done
}

// runOnDemand asks the catalog at start, then whenever a lookup or the
// liveness check asks for a refresh, at most refreshBurst times per
// CatalogRefreshEvery; a failed question is asked again with backoff until
// Consul answers, which ends the outage it began.
func (c *catalogWatch) runOnDemand(ctx context.Context, m *Mesh) {
	var lastIndex uint64
	failures := 0
	for first := true; ; first = false {
		switch {
		case failures > 0:
			if !sleepCtx(ctx, m.cfg.RetryBackoff(failures)) {
				return
			}
		case !first:
			select {
			case <-ctx.Done():
				return
			case <-c.demand.wanted:
			}
			c.demand.mu.Lock()
			next := c.demand.starts[c.demand.next].Add(m.cfg.CatalogRefreshEvery)
			c.demand.mu.Unlock()
			if !sleepCtx(ctx, time.Until(next)) {
				return
			}
		}
		start := time.Now()
		index, err := c.refresh(ctx, m, start, failures > 0, lastIndex)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			m.watchErrors.Add(1)
			c.lastErr.Store(&err)
			c.failed(catalogQuery, err, m)
			if failures == 1 {
				m.log.Info("consul query failed, retrying with backoff; keeping the last answer", "query", catalogQuery, "err", err)
			} else {
				m.log.Debug("consul query failed again", "query", catalogQuery, "err", err, "failures", failures)
			}
		} else {
			if failures > 0 {
				m.log.Info("consul answers again", "query", catalogQuery, "failures", failures)
			}
			failures, lastIndex = 0, index
		}
		c.demand.attemptDone(start)
	}
}

// refresh asks the catalog once, without blocking, and applies its answer.
func (c *catalogWatch) refresh(ctx context.Context, m *Mesh, start time.Time, afterOutage bool, lastIndex uint64) (uint64, error) {
	cctx, cancel := c.live.callContext(ctx, fetchDeadline(0, 0, m.cfg.CallTimeout))
	defer cancel()
	services, meta, err := c.source.Services(m.cfg.QueryMode.options(true, 0, 0).WithContext(cctx))
	if err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			err = fmt.Errorf("%s: %w", catalogQuery, context.Cause(cctx))
		}
		return 0, fmt.Errorf("listing services in the consul catalog: %w", consulerr.Explain(err))
	}
	c.live.answered(time.Now())
	m.acl.note(catalogQuery, meta.ResultsFilteredByACLs, `service:read on some services (DNS knows only the names it may read; service_prefix "" { policy = "read" } shows all)`, false, m.log)
	c.answeredAgain(m)
	if afterOutage && meta.LastIndex < lastIndex {
		c.lostState(m)
	}
	c.apply(services, m)
	c.demand.answeredAt.Store(start.UnixNano())
	return meta.LastIndex, nil
}

// livenessChanged, in CatalogOnDemand, stands for the catalog's blocking
// query, which would fail while Consul is away and answer when it is back:
// the outage is the catalog's too, until the catalog answers again (asked
// now, and with backoff while it fails).
func (c *catalogWatch) livenessChanged(down error, m *Mesh) {
	if down != nil {
		c.lastErr.Store(&down)
		c.failed(catalogQuery, down, m)
	}
	c.demand.want()
}

// AwaitName waits, until ctx ends, for the catalog's answer about a name
// that ServiceExists or SubsetExists said is not known yet.
func (m *Mesh) AwaitName(ctx context.Context, name string) error {
	if m.catalog.demand == nil {
		return nil
	}
	for {
		done := m.catalog.demand.doneChan()
		var err error
		if tag, service, ok := strings.Cut(name, "."); ok {
			_, err = m.SubsetExists(tag, service)
		} else {
			_, err = m.ServiceExists(name)
		}
		if !errors.Is(err, ErrNotKnownYet) {
			return nil
		}
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the consul catalog's answer about %q: %w", name, ctx.Err())
		}
	}
}

// RefreshCatalog, in CatalogOnDemand, asks the catalog again (within the
// same bound as lookups) and waits for the answer, until ctx ends; with
// the catalog watched, it does nothing: the watch is as fresh as it gets.
func (m *Mesh) RefreshCatalog(ctx context.Context) error {
	d := m.catalog.demand
	if d == nil {
		return nil
	}
	asked := time.Now()
	for {
		done := d.doneChan()
		d.mu.Lock()
		fresh := !d.lastStart.Before(asked)
		d.mu.Unlock()
		if fresh {
			return nil
		}
		d.want()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the consul catalog: %w", ctx.Err())
		}
	}
}
