package upstream

import (
	"slices"
	"strings"
)

// Tag subsets: "v2.web" is the instances of service web that carry the
// tag v2 (case-insensitively), reached by the app as v2.web.local. A
// subset routes like a service of its own (a view, balancer, retry
// budget and passive health of its own) with the policy of its service,
// and its sticky cookies are the service's, so a client pinned through
// web.local stays pinned through v2.web.local when its instance has the
// tag.
//
// A subset has no Consul query of its own: its service's watch, which
// asks for every registered instance with its tags anyway, hands each
// answer on, filtered (subsetLink.push). A second blocking query with
// Consul's tag filter would cost as much again and bring nothing new:
// Consul wakes a blocking health query on any change of the service,
// tagged or not, so both queries would return together every time, and
// the subset's view could lag or lead its service's. Filtering locally
// keeps one query per service however many subsets the app uses, and one
// consistent answer (and fail-static state) for the service and its
// subsets.

// splitSubset splits "tag.service" into its tag and service; ok is false
// for a plain service name. Consul service names reached through DNS are
// one label, so a dot always means a subset.
func splitSubset(name string) (tag, service string, ok bool) {
	tag, service, ok = strings.Cut(name, ".")
	if !ok || tag == "" || service == "" || strings.Contains(service, ".") {
		return "", "", false
	}
	return tag, service, true
}

// SubsetName is the name of the subset of service whose instances carry
// tag, as Target, Watch and Instances take it: "v2.web".
func SubsetName(tag, service string) string {
	return strings.ToLower(tag) + "." + strings.ToLower(service)
}

// subsetLink ties a service's watch to its subsets' watches, and a
// subset's watch to its service's. Only one side is set on any watch.
type subsetLink struct {
	// On a subset's watch: its service's watch and its tag, lower-case.
	parent *serviceWatch
	tag    string

	// On a service's watch: its subsets' watches, guarded by the
	// service watch's mu (taken before a subset's, never after).
	children []*serviceWatch
}

// service is the name of the Consul service w routes to: its own, or its
// parent's for a subset.
func (w *serviceWatch) service() string {
	if w.sub.parent != nil {
		return w.sub.parent.name
	}
	return w.name
}

// ConsulService is the Consul service the target routes to: its
// Service, or for a tag subset ("v2.web") the subset's service ("web"),
// whose identity (mTLS) and instances it has.
func (t *Target) ConsulService() string { return t.watch.service() }

// subsetWatch returns the watch of the subset of service with tag, made
// (with no loop of its own) if new and fed at once with what its service
// already knows.
func (m *Mesh) subsetWatch(name, tag, service string) *serviceWatch {
	parent := m.watch(service)
	m.mu.Lock()
	w, ok := m.watches[name]
	if !ok {
		w = newServiceWatch(name)
		w.sub.parent, w.sub.tag = parent, tag
		w.metrics = m.cfg.Metrics.Service(name)
		w.hosts.metrics = w.metrics
		m.watches[name] = w
	}
	m.mu.Unlock()
	if ok {
		return w
	}
	parent.mu.Lock()
	defer parent.mu.Unlock()
	parent.sub.children = append(parent.sub.children, w)
	if parent.view.Load() != nil {
		// What the service's watch knows now, as a push would give it.
		w.failingSince.Store(parent.failingSince.Load())
		w.mu.Lock()
		w.settleUntil, w.outageBase = parent.settleUntil, withTag(parent.outageBase, tag)
		w.mu.Unlock()
		// As from disk: no answer of Consul for the subset to save or to
		// release requests with; its service's answer did that already.
		w.update(withTag(parent.lastEndpoints, tag), m, true)
		select {
		case <-parent.answered:
			w.answeredOnce.Do(func() { close(w.answered) })
		default:
		}
	}
	return w
}

// push hands the service watch's last answer, filtered, to every subset.
// fromDisk is as for update.
func (w *serviceWatch) pushSubsets(m *Mesh, fromDisk bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.sub.children {
		// The settle after a Consul that lost its state is decided on the
		// service's answer (settle): the subset follows it.
		base := withTag(w.outageBase, c.sub.tag)
		c.mu.Lock()
		if !c.settleUntil.Equal(w.settleUntil) || !endpointsEqual(base, c.outageBase) {
			c.settleChanged = true
		}
		c.settleUntil, c.outageBase = w.settleUntil, base
		c.mu.Unlock()
		c.update(withTag(w.lastEndpoints, c.sub.tag), m, fromDisk)
	}
}

// subsetsFailed tells the subsets that their service's query failed, as
// serviceWatch.failed is told for the service.
func (w *serviceWatch) subsetsFailed(since int64) {
	for _, c := range w.subsets() {
		c.failed(since)
	}
}

func (w *serviceWatch) subsets() []*serviceWatch {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.sub.children)
}

// subsetPolicy returns the policy of a subset's service, for its view; ok
// is false for a service's own watch, or before its service has a view.
func (w *serviceWatch) subsetPolicy() (p Policy, ok bool) {
	if w.sub.parent == nil {
		return Policy{}, false
	}
	v := w.sub.parent.view.Load()
	if v == nil {
		return Policy{}, false
	}
	return v.policy, true
}

// policyChanged reports whether a subset's view routes with another
// policy than its service has now (a meta change on an instance outside
// the subset), so that it must be rebuilt even with the same instances.
func (w *serviceWatch) policyChanged() bool {
	p, ok := w.subsetPolicy()
	if !ok {
		return false
	}
	v := w.view.Load()
	return v != nil && v.policy != p
}

// withTag returns the endpoints of eps that carry tag (lower-case),
// compared case-insensitively.
func withTag(eps []Endpoint, tag string) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if hasTag(e.Tags, tag) {
			out = append(out, e)
		}
	}
	return out
}

func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

// SubsetExists reports whether service exists and one of its registered
// instances carries tag: from the catalog's last good answer, which lists
// the tags of every service; when that came from the state file (which
// keeps no tags), from the saved instances of the service. It fails as
// ServiceExists does while nothing is known.
func (m *Mesh) SubsetExists(tag, service string) (bool, error) {
	ok, err := m.ServiceExists(service)
	if err != nil || !ok {
		return false, err
	}
	tag, service = strings.ToLower(tag), strings.ToLower(service)
	if snap := m.catalog.current.Load(); snap != nil && snap.tags != nil {
		has := func(s *catalogSnapshot) bool { _, ok := s.tags[service][tag]; return ok }
		if has(snap) || m.catalog.demand == nil {
			return has(snap), nil
		}
		// On demand, the service's own watch may know the tag already;
		// if not, the catalog is asked again.
		if w := m.watchOf(service); w != nil && len(withTag(w.registered(), tag)) > 0 {
			return true, nil
		}
		return m.catalog.demand.lookup(tag+"."+service, m.catalog.refreshEvery)
	}
	w := m.watchOf(strings.ToLower(service))
	if w == nil {
		return false, nil
	}
	return len(withTag(w.registered(), strings.ToLower(tag))) > 0, nil
}

// SubsetNames returns the names ("tag.service") of every subset the
// catalog's last good answer allows, for mapping a VIP an earlier run
// handed out back to its name; nil when the catalog gave no tags.
func (m *Mesh) SubsetNames() []string {
	snap := m.catalog.current.Load()
	if snap == nil || snap.tags == nil {
		return nil
	}
	var out []string
	for service, tags := range snap.tags {
		for tag := range tags {
			out = append(out, tag+"."+service)
		}
	}
	slices.Sort(out)
	return out
}

// catalogTags lower-cases the catalog's tags of each service.
func catalogTags(services map[string][]string) map[string]map[string]struct{} {
	out := make(map[string]map[string]struct{}, len(services))
	for name, tags := range services {
		set := out[strings.ToLower(name)]
		if set == nil {
			set = make(map[string]struct{}, len(tags))
			out[strings.ToLower(name)] = set
		}
		for _, t := range tags {
			set[strings.ToLower(t)] = struct{}{}
		}
	}
	return out
}

// mergeTags adds the tags of old to cur (for the settle time after an
// outage, as for names).
func mergeTags(cur, old map[string]map[string]struct{}) {
	for name, tags := range old {
		set := cur[name]
		if set == nil {
			set = make(map[string]struct{}, len(tags))
			cur[name] = set
		}
		for t := range tags {
			set[t] = struct{}{}
		}
	}
}

func tagsEqual(a, b map[string]map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for name, ta := range a {
		tb, ok := b[name]
		if !ok || len(ta) != len(tb) {
			return false
		}
		for t := range ta {
			if _, ok := tb[t]; !ok {
				return false
			}
		}
	}
	return true
}
