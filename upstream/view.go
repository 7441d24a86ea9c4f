package upstream

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// serviceView is what the mesh routes a service's requests on, swapped as
// a whole when Consul's answer changes: the policy and the sets it may
// route to.
type serviceView struct {
	policy  Policy
	passing *EndpointSet // instances passing their checks
	all     *EndpointSet // every registered instance, for panic routing
	// settle is passing plus the instances that were passing before an
	// outage of Consul, used until settleUntil: right after Consul comes
	// back its checks may report critical until they first run again.
	settle      *EndpointSet
	settleUntil time.Time
	panicLogged atomic.Bool
	// noMTLS is why strict mTLS routes to no instance ("": it does), and
	// hasMTLS whether some instance is reached over mTLS (connect.go).
	noMTLS  string
	hasMTLS bool
}

// Reasons a view gives no set, for the answer's X-Meshlet-Error and body.
const (
	whyNoneRegistered = "no instance is registered in consul"
)

// route returns the set requests go to at now, or why there is none.
func (v *serviceView) route(now time.Time) (set *EndpointSet, panicking bool, why string) {
	if v.settle != nil && now.Before(v.settleUntil) {
		return v.settle, false, ""
	}
	if v.passing.Len() > 0 {
		return v.passing, false, ""
	}
	if v.all.Len() == 0 {
		return nil, false, whyNoneRegistered
	}
	if v.policy.Panic {
		return v.all, true, ""
	}
	return nil, false, fmt.Sprintf("all %d registered instances fail their checks in consul (panic routing is off)", v.all.Len())
}

// buildView makes the view of a service from its registered instances.
// It runs on the watch's goroutine (or before Run, for the state file).
func (w *serviceWatch) buildView(eps []Endpoint, m *Mesh, now time.Time) *serviceView {
	// Sorted first, so that meta votes, whose ties go to the first
	// instance, do not depend on Consul's order.
	sortByNodeID(eps)
	metas := make([]map[string]string, len(eps))
	for i, e := range eps {
		metas[i] = e.Meta
	}
	policy, problems := derivePolicy(w.name, metas, m.cfg.Overrides)
	if p, ok := w.subsetPolicy(); ok {
		policy, problems = p, nil
	}
	if msg := fmt.Sprint(problems); len(problems) > 0 && msg != w.lastProblems {
		m.log.Warn("ignoring invalid meshlet settings in the service meta", "service", w.name, "problems", problems)
		w.lastProblems = msg
	}
	var codec *cookieCodec
	if policy.Sticky {
		codec = newCookieCodec(w.service(), policy.CookieName, m.cfg.StickyKey)
	}
	var passing []Endpoint
	keep := map[string]bool{}
	for _, e := range eps {
		keep[hostKey(e)] = true
		if e.Status == api.HealthPassing {
			passing = append(passing, e)
		}
	}
	v := &serviceView{
		policy:  policy,
		passing: buildSet(passing, &w.hosts, codec),
		all:     buildSet(slices.Clone(eps), &w.hosts, codec),
	}
	if now.Before(w.settleUntil) && len(w.outageBase) > 0 {
		union := append([]Endpoint(nil), passing...)
		inPassing := map[string]bool{}
		for _, e := range passing {
			inPassing[hostKey(e)] = true
		}
		for _, e := range w.outageBase {
			if !inPassing[hostKey(e)] {
				union = append(union, e)
				keep[hostKey(e)] = true
			}
		}
		if len(union) > len(passing) {
			v.settle = buildSet(union, &w.hosts, codec)
			v.settleUntil = w.settleUntil
		}
	}
	if len(passing) > 0 {
		w.lastGood = passing
	}
	w.hosts.keep(keep)
	return v
}
