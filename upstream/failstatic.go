package upstream

import (
	"fmt"
	"slices"
	"time"
)

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
	if since := m.catalog.failingSince.Load(); since != 0 && cat != nil {
		age := now.Sub(time.Unix(0, since)).Round(time.Second)
		if cat.fromDisk {
			out = append(out, fmt.Sprintf("fail-static: consul has not answered since meshlet started; routing on the saved state, confirmed %v ago (max staleness %s)",
				age, maxStaleText(m.cfg.MaxStale)))
		} else {
			out = append(out, fmt.Sprintf("fail-static: consul unreachable for %v; routing on the last good instances (max staleness %s)",
				age, maxStaleText(m.cfg.MaxStale)))
		}
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
