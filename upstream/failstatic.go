package upstream

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// outage tells whether Consul answers every watch of the mesh: the
// catalog's and each service's. Any of them failing is an outage, since a
// Consul agent cut off from its servers may fail one query while another
// still waits on a blocking query that will never return: meshlet then
// routes on its last good instances (fail-static), says so in Status and
// the log at the first failure, and again when every watch answers.
type outage struct {
	mu           sync.Mutex
	failing      map[string]error // query → its last error
	since        time.Time        // when Consul last answered before the outage; zero when none
	lastReminder time.Time
}

// failed records that the query what failed with err. since is when
// Consul last answered anything, the start of the outage as far as
// anyone knows.
func (o *outage) failed(what string, err error, since time.Time, routing bool, log *slog.Logger) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failing == nil {
		o.failing = make(map[string]error)
	}
	now := time.Now()
	first := len(o.failing) == 0
	o.failing[what] = err
	switch {
	case first:
		o.since = since
		o.lastReminder = now
		if routing {
			log.Warn("consul unreachable: fail-static, routing on the last good instances until it answers again",
				"query", what, "err", err)
		} else {
			log.Warn("consul unreachable, and meshlet has nothing to route on yet", "query", what, "err", err)
		}
	case now.Sub(o.lastReminder) >= failStaticReminder:
		o.lastReminder = now
		log.Warn("consul still unreachable: fail-static, routing on the last good instances",
			"for", now.Sub(o.since).Round(time.Second), "failing_queries", len(o.failing), "query", what, "err", err)
	}
}

// answered records a good answer of the query what.
func (o *outage) answered(what string, log *slog.Logger) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.failing[what]; !ok {
		return
	}
	delete(o.failing, what)
	if len(o.failing) == 0 {
		log.Info("consul answers every query again: leaving fail-static",
			"outage", time.Since(o.since).Round(time.Millisecond))
		o.since = time.Time{}
	}
}

// state returns when the outage began and one of its errors (the
// catalog's first, as the query every meshlet runs), or a zero time when
// every query answers.
func (o *outage) state() (since time.Time, query string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.failing) == 0 {
		return time.Time{}, "", nil
	}
	for what, e := range o.failing {
		if query == "" || what == catalogQuery || (query != catalogQuery && what < query) {
			query, err = what, e
		}
	}
	return o.since, query, err
}

// consulFailingSince is since when Consul has not answered the mesh (unix
// ns): the catalog's failure streak, any service watch's, or the saved
// state's confirmation before the first answer; 0 while all answer.
func (m *Mesh) consulFailingSince() int64 {
	since := m.catalog.failingSince.Load()
	if t, _, _ := m.outage.state(); !t.IsZero() && (since == 0 || t.UnixNano() < since) {
		since = t.UnixNano()
	}
	return since
}

// loadState routes on the state file until Consul answers: the catalog's
// names for DNS, and the instances of every service in use, whose watches
// start with Run. A bad file is logged and ignored; it is replaced at the
// next write.
func (m *Mesh) loadState() {
	st, err := m.state.load()
	if err != nil {
		m.log.Warn("ignoring the state file", "err", err)
		return
	}
	if st == nil {
		return
	}
	confirmed := st.ConfirmedAt.UnixNano()
	names := make(map[string]struct{}, len(st.Catalog))
	for _, name := range st.Catalog {
		names[name] = struct{}{}
	}
	m.catalog.store(names, true)
	m.catalog.failingSince.Store(confirmed)
	for name, eps := range st.Services {
		w := m.watch(name)
		w.update(eps, m, true)
		w.failingSince.Store(confirmed)
	}
	m.log.Info("loaded the last good instances from the state file; they route until consul answers",
		"path", m.state.path, "services", len(st.Services), "confirmed", st.ConfirmedAt.Format(time.RFC3339),
		"age", time.Since(st.ConfirmedAt).Round(time.Second))
}

// stateSnapshot is what the state file gets: nil until Consul has answered
// in this run, since the file already holds anything older.
func (m *Mesh) stateSnapshot(bool) *stateFile {
	cat := m.catalog.current.Load()
	if cat == nil || cat.fromDisk {
		return nil
	}
	// Confirmed when Consul last answered, not now: a Consul that hangs
	// has confirmed nothing since, even before the watches notice.
	confirmed := m.catalog.live.lastAnswer()
	if since := m.catalog.failingSince.Load(); since != 0 {
		confirmed = time.Unix(0, since)
	}
	if confirmed.IsZero() {
		return nil
	}
	st := &stateFile{
		Version:     stateVersion,
		Consul:      m.cfg.StateID,
		ConfirmedAt: confirmed,
		Catalog:     slices.Clone(cat.sorted),
		Services:    map[string][]Endpoint{},
	}
	for _, name := range m.watchedNames() {
		if w := m.watchOf(name); w != nil {
			if eps := w.registered(); eps != nil {
				st.Services[name] = eps
			}
		}
	}
	return st
}

// Status returns what an operator should know about how meshlet routes
// right now, for /readyz details; empty when all is normal. It says when
// meshlet routes on its last good instances because Consul does not
// answer (fail-static), which services are past the staleness limit, and
// when state cannot be saved.
func (m *Mesh) Status() []string {
	var out []string
	now := time.Now()
	cat := m.catalog.current.Load()
	if since := m.consulFailingSince(); since != 0 && cat != nil {
		age := now.Sub(time.Unix(0, since)).Round(time.Second)
		var line string
		if cat.fromDisk {
			line = fmt.Sprintf("fail-static: consul has not answered since meshlet started; routing on the saved state, confirmed %v ago (max staleness %s)",
				age, maxStaleText(m.cfg.MaxStale))
		} else {
			line = fmt.Sprintf("fail-static: consul unreachable for %v; routing on the last good instances (max staleness %s)",
				age, maxStaleText(m.cfg.MaxStale))
		}
		if _, query, err := m.outage.state(); err != nil {
			if msg := err.Error(); strings.HasPrefix(msg, query) {
				line += "; " + msg
			} else {
				line += fmt.Sprintf("; %s: %s", query, msg)
			}
		}
		out = append(out, line)
	}
	names := m.watchedNames()
	slices.Sort(names)
	for _, name := range names {
		w := m.watchOf(name)
		if w == nil {
			continue
		}
		if age, stale := w.staleness(now, m.cfg.MaxStale); stale {
			out = append(out, fmt.Sprintf("service %s: last good instances are %v old, over the max staleness %v: refusing its requests",
				name, age.Round(time.Second), m.cfg.MaxStale))
		}
	}
	out = append(out, m.acl.status()...)
	if m.state != nil && m.state.problem != "" {
		out = append(out, m.state.problem)
	}
	return out
}

func maxStaleText(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

// settle keeps routing to instances that passed before, while the answer
// shows that Consul forgot how they were: their checks were registered
// again and have not run yet (critical with no output, as every check
// starts), or, after an outage, the index went backwards (lostState: a
// restarted dev agent, which lists nobody until they register again).
// An instance whose check has run since is judged by it at once: a leader
// election, a partition or a single failed query is no evidence, so an
// instance that turned critical meanwhile stops getting traffic with the
// first answer that says so. Called with every answer, before update.
func (w *serviceWatch) settle(entries []*api.ServiceEntry, lostState bool, m *Mesh) {
	if m.cfg.SettleTime <= 0 {
		return
	}
	now := time.Now()
	// Keyed by node and ID (hostKey): Consul's default service ID is the
	// service name, the same on every node.
	fresh := make(map[string]bool) // instance → its checks just reset
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		k := hostKey(Endpoint{ID: e.Service.ID, Node: entryNode(e)})
		present[k] = true
		if checksReset(e.Checks) {
			fresh[k] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	base := map[string]Endpoint{}
	if now.Before(w.settleUntil) {
		for _, e := range w.outageBase {
			base[hostKey(e)] = e
		}
	}
	var reset []string
	for _, e := range w.lastGood {
		k := hostKey(e)
		if lostState || fresh[k] {
			if _, ok := base[k]; !ok {
				reset = append(reset, e.ID)
			}
			base[k] = e
		}
	}
	if len(reset) > 0 {
		w.settleUntil = now.Add(m.cfg.SettleTime)
		why := "their checks were registered again and have not run yet"
		if lostState {
			why = "consul's index went backwards after an outage: it lost its state"
		}
		m.log.Info("instances that passed before keep their traffic until their checks run again", "service", w.name,
			"ids", reset, "why", why, "for_at_most", m.cfg.SettleTime)
	}
	// Only the instances still waiting for a check, or still missing after
	// Consul lost its state, keep settling.
	var still []Endpoint
	for k, e := range base {
		if fresh[k] || !present[k] {
			still = append(still, e)
		}
	}
	sortByNodeID(still)
	if len(reset) > 0 || len(still) != len(w.outageBase) {
		w.settleChanged = true
	}
	w.outageBase = still
	if len(still) == 0 {
		w.settleUntil = time.Time{}
	}
}

// checksReset reports whether an instance fails only checks that have
// never run: Consul registers every check critical with no output.
func checksReset(checks api.HealthChecks) bool {
	failing := false
	for _, c := range checks {
		if c == nil || c.Status == api.HealthPassing {
			continue
		}
		if c.Output != "" {
			return false
		}
		failing = true
	}
	return failing
}

// entryNode is the name of the node of a health entry; "" when it has none.
func entryNode(e *api.ServiceEntry) string {
	if e.Node == nil {
		return ""
	}
	return e.Node.Node
}
