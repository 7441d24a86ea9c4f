package upstream

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/metrics"
)

// hostState is the runtime state of one instance, shared by every set the
// instance is in and kept across changes of the set: requests in flight
// (for least-request) and passive health (consecutive failures and
// ejection). Selectors ask it one question: available.
type hostState struct {
	active       atomic.Int64
	latency      atomic.Int64           // moving average of the time to an answer head, ns; 0: none yet
	latencyAt    atomic.Int64           // unix ns of its last sample
	failures     atomic.Int64           // consecutive
	ejections    atomic.Int64           // how often it was ejected in a row; multiplies the ejection time
	ejectedUntil atomic.Int64           // unix nanoseconds; 0 or past: not ejected
	probing      atomic.Bool            // a probe keeps it out until it accepts a connection (unreachable.go)
	readmits     atomic.Int64           // how often it was readmitted: a probe of an earlier time stops
	addr         atomic.Pointer[string] // its address in the latest set, which a probe dials
	connecting   atomic.Int64           // unix ns when a connect to it began that has not ended; 0: none
	gone         atomic.Bool            // forgotten by its registry: a probe of it stops
	// metrics are the instance's counters, resolved once (nil: none).
	metrics *metrics.Instance
}

// ejected reports whether the instance is ejected at now.
func (h *hostState) ejected(now int64) bool { return h.ejectedUntil.Load() > now }

// available reports whether the instance is not ejected at now, and not
// suspect: a connect to it pending for longer than slowConnect.
func (h *hostState) available(now int64) bool {
	if h.ejectedUntil.Load() > now {
		return false
	}
	c := h.connecting.Load()
	return c == 0 || now-c < int64(slowConnect)
}

// succeeded resets the failure streak. An instance that has served well
// for a whole base ejection time after its last ejection ended starts
// again from a single ejection time.
func (h *hostState) succeeded(now int64, p *Policy) {
	if h.failures.Load() != 0 {
		h.failures.Store(0)
	}
	if h.ejections.Load() != 0 {
		if until := h.ejectedUntil.Load(); now-until > int64(p.EjectTime) {
			h.ejections.Store(0)
		}
	}
}

// answeredIn folds the time d an answer head took, at now, into the
// instance's moving average (weight 1/8; racing updates may lose a
// sample, which an average can afford).
func (h *hostState) answeredIn(d, now int64) {
	d = max(d, 1)
	if old := h.latency.Load(); old != 0 {
		d = max(old+(d-old)/8, 1)
	}
	h.latency.Store(d)
	h.latencyAt.Store(now)
}

// latencyFresh is how long an instance's moving average counts: one that
// lost its ties for being slow gets no new samples while traffic is low,
// and after this it is judged afresh.
const latencyFresh = 10 * time.Second

// clearlyFaster reports whether a's recent answers came in under half the
// time of b's, both measured within latencyFresh of now. Instances without
// a recent measure, or as fast as each other, are not told apart.
func clearlyFaster(a, b *hostState, now int64) bool {
	la, lb := a.latency.Load(), b.latency.Load()
	if la == 0 || lb == 0 || 2*la > lb {
		return false
	}
	return now-a.latencyAt.Load() < int64(latencyFresh) && now-b.latencyAt.Load() < int64(latencyFresh)
}

// maxEjectionFactor caps the multiplication of the ejection time.
const maxEjectionFactor = 10

// failed counts a failure of host i of set and ejects it once it has
// failed p.EjectAfter times in a row, unless that would eject more than
// p.EjectMaxShare of the set or leave none of it available. It reports
// whether it ejected the instance, and for how long.
func (s *EndpointSet) failed(i int, now time.Time, p *Policy) (time.Duration, bool) {
	h := s.hosts[i]
	n := h.failures.Add(1)
	if p.EjectAfter <= 0 || n < int64(p.EjectAfter) {
		return 0, false
	}
	return s.eject(i, now, p)
}

// eject takes host i of set out now, for the policy's ejection time times
// the ejections in a row, unless that would eject more than
// p.EjectMaxShare of the set or leave none of it available.
func (s *EndpointSet) eject(i int, now time.Time, p *Policy) (time.Duration, bool) {
	h := s.hosts[i]
	s.ejectMu.Lock()
	defer s.ejectMu.Unlock()
	nowNs := now.UnixNano()
	if h.ejected(nowNs) {
		return 0, false // already out; a request that started before counts no more
	}
	ejected := 0
	for _, o := range s.hosts {
		if o.ejected(nowNs) { // suspects (a slow connect) are not out for this count
			ejected++
		}
	}
	allowed := int(float64(s.Len()) * p.EjectMaxShare)
	if p.EjectMaxShare > 0 {
		allowed = max(allowed, 1) // one instance of two may go, even at 10%
	}
	if ejected+1 > allowed || ejected+1 >= s.Len() {
		return 0, false
	}
	k := min(h.ejections.Add(1), maxEjectionFactor)
	d := time.Duration(k) * p.EjectTime
	h.ejectedUntil.Store(nowNs + int64(d))
	h.failures.Store(0)
	h.metrics.Ejected()
	return d, true
}

// hostRegistry hands out the hostState of each instance, the same one for
// as long as the instance is registered.
type hostRegistry struct {
	mu      sync.Mutex
	hosts   map[string]*hostState
	ids     map[string]string // hostKey → Consul service ID, for the metrics
	metrics *metrics.Service  // nil: none
}

func hostKey(e Endpoint) string { return e.Node + "\x00" + e.ID }

// get returns the state of e, made if new.
func (r *hostRegistry) get(e Endpoint) *hostState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil {
		r.hosts = map[string]*hostState{}
	}
	h := r.hosts[hostKey(e)]
	if h == nil {
		h = &hostState{metrics: r.metrics.Instance(e.ID)}
		r.hosts[hostKey(e)] = h
		if r.metrics != nil {
			if r.ids == nil {
				r.ids = map[string]string{}
			}
			r.ids[hostKey(e)] = e.ID
		}
	}
	if a := h.addr.Load(); a == nil || *a != e.Addr {
		addr := e.Addr
		h.addr.Store(&addr)
	}
	return h
}

// readmit clears the failures and ejection of e, if it has a state.
func (r *hostRegistry) readmit(e Endpoint) {
	r.mu.Lock()
	h := r.hosts[hostKey(e)]
	r.mu.Unlock()
	if h != nil {
		h.readmits.Add(1) // before the ejection ends, so that a probe's hold cannot outlive it
		h.ejectedUntil.Store(0)
		h.ejections.Store(0)
		h.failures.Store(0)
	}
}

// keep forgets the state of every instance not in keep: one that comes
// back later starts afresh.
func (r *hostRegistry) keep(keep map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.hosts {
		if !keep[k] {
			r.hosts[k].gone.Store(true)
			delete(r.hosts, k)
			if id, ok := r.ids[k]; ok {
				// It left Consul: its series go with it.
				r.metrics.ForgetInstance(id)
				delete(r.ids, k)
			}
		}
	}
}
