package upstream

// Caller-side intentions: meshlet decides, as a client, whether Consul's
// intentions let the app's identity call a service. A server that checks
// only at the handshake (Consul's built-in proxy) would otherwise keep
// serving a denied caller over pooled or resumed connections. After a
// deny, requests to the service are refused with a 403 (raw connections
// are closed), and the open mTLS connections to it are closed.
//
// The decision follows Consul's own (agent/connect_auth.go): the
// intentions toward the service, in precedence order (a blocking
// /v1/connect/intentions/match by destination); the first whose source
// matches the app's identity decides; without one, the default of the
// cluster (allow when ACLs are off, else the ACL default policy).
// Unlike Consul's L4 check, an intention with L7 permissions does not
// refuse here: the server, which sees the requests, decides those.

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/internal/consulerr"
)

// intentionSource is the part of Consul's Connect API the intention
// watch needs; *api.Connect has it.
type intentionSource interface {
	IntentionMatch(args *api.IntentionMatch, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error)
}

// runIntentions watches the intentions toward the service until ctx is
// done, and decides on every change.
func (w *serviceWatch) runIntentions(ctx context.Context, m *Mesh) {
	src := intentionSource(m.cfg.Consul.Connect())
	what := fmt.Sprintf("intentions toward %q", w.name)
	q := &blockingQuery[[]*api.Intention]{
		what: what,
		fetch: func(ctx context.Context, waitIndex uint64) ([]*api.Intention, uint64, error) {
			opts := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: m.cfg.WaitTime}).WithContext(ctx)
			matches, meta, err := src.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{w.name}}, opts)
			if err != nil {
				return nil, 0, fmt.Errorf("asking consul for the intentions toward %q: %w", w.name, consulerr.Explain(err))
			}
			// A hidden intention may be the deny that decides: say so. Not
			// a routed query: its instances are all there.
			m.acl.note(what, meta.ResultsFilteredByACLs, fmt.Sprintf("intentions:read on %q", w.name), false, m.log)
			return matches[w.name], meta.LastIndex, nil
		},
		waitTime:    m.cfg.WaitTime,
		callTimeout: m.cfg.CallTimeout,
		live:        &m.catalog.live,
		apply: func(ixns []*api.Intention) {
			if m.mtls.defaultAllow.Load() == 0 {
				m.learnIntentionDefault(ctx)
			}
			w.connect.ixns.Store(&ixns)
			m.decide(w)
		},
		// While Consul does not answer, the last decision stands.
		failed:  func(error, int) { m.watchErrors.Add(1) },
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

// learnIntentionDefault asks the local agent what applies when no
// intention matches: allow with ACLs off, else the ACL default policy.
// On failure it is asked again at the next answer; allow meanwhile, as
// for a dev agent.
func (m *Mesh) learnIntentionDefault(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	// Agent().Self takes no context: the raw query does, so that a Consul
	// that hangs cannot hold the watch.
	var self map[string]map[string]any
	_, err := m.cfg.Consul.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		// Once: it is asked again at every answer of every intention watch.
		if !m.mtls.defaultUnread.Swap(true) {
			m.log.Warn("cannot read the local consul agent's ACL settings (/v1/agent/self needs agent:read); "+
				"taking intentions as default allow until it can", "err", consulerr.Explain(err),
				"missing", "agent:read", "token_from", consulerr.TokenSource)
		}
		return
	}
	if m.mtls.defaultUnread.Swap(false) {
		m.log.Info("read the local consul agent's ACL settings again")
	}
	allow, why := intentionDefault(self)
	if allow {
		m.mtls.defaultAllow.Store(1)
	} else {
		m.mtls.defaultAllow.Store(2)
	}
	m.log.Debug("intentions default", "allow", allow, "because", why)
}

// intentionDefault reads the default of intentions from /v1/agent/self.
func intentionDefault(self map[string]map[string]any) (allow bool, why string) {
	dc := self["DebugConfig"]
	if enabled, ok := dc["ACLsEnabled"].(bool); !ok || !enabled {
		return true, "ACLs are off"
	}
	if rs, ok := dc["ACLResolverSettings"].(map[string]any); ok {
		if p, ok := rs["ACLDefaultPolicy"].(string); ok {
			return p != "deny", "ACL default policy " + p
		}
	}
	return true, "ACL default policy unknown"
}

// decide applies the intentions toward w's service to the app's
// identity: a deny refuses new requests and closes the open connections;
// an allow lifts an earlier deny.
func (m *Mesh) decide(w *serviceWatch) {
	id, ok := m.identity()
	list := w.connect.ixns.Load()
	var (
		d   *DeniedError
		ixn *api.Intention
	)
	if ok && list != nil {
		d, ixn = denial(*list, id, w.name, m.mtls.defaultAllow.Load() == 2)
	}
	old := w.connect.denied.Swap(d)
	switch {
	case d != nil && old == nil:
		closed := w.connect.conns.closeAll()
		m.log.Warn("a consul intention denies the app's calls to the service: refusing them, and closed its open connections",
			"service", w.name, "source", d.Source, "intention", d.Intention, "closed", closed,
			"intention_age", intentionAge(ixn, time.Now()).Round(time.Millisecond))
	case d == nil && old != nil:
		m.log.Info("consul intentions allow the app's calls to the service again", "service", w.name, "source", old.Source)
	}
}

// denial returns the refusal of calls from id to service under ixns (the
// intentions toward it), or nil when they are allowed; and the intention
// that decided, nil for the default.
func denial(ixns []*api.Intention, id certs.ID, service string, defaultDeny bool) (*DeniedError, *api.Intention) {
	// Consul sends them in precedence order; sorted again, stably, so that
	// the rule does not rest on it.
	sorted := slices.Clone(ixns)
	slices.SortStableFunc(sorted, func(a, b *api.Intention) int { return cmp.Compare(b.Precedence, a.Precedence) })
	for _, ixn := range sorted {
		if ixn == nil || !sourceMatches(ixn, id) {
			continue
		}
		if len(ixn.Permissions) > 0 || ixn.Action == api.IntentionActionAllow {
			return nil, ixn
		}
		return &DeniedError{Service: service, Source: id.Service, Intention: ixn.String()}, ixn
	}
	if defaultDeny {
		return &DeniedError{Service: service, Source: id.Service,
			Intention: fmt.Sprintf("%s => %s (none matches; the ACL default policy denies)", id.Service, service)}, nil
	}
	return nil, nil
}

// sourceMatches reports whether an intention's source covers id, as
// Consul's connect.AuthorizeIntentionTarget decides.
func sourceMatches(ixn *api.Intention, id certs.ID) bool {
	if ixn.SourcePeer != "" {
		return false // a peered cluster's service: never this one
	}
	if orDefault(ixn.SourcePartition) != orDefault(id.Partition) {
		return false
	}
	if ixn.SourceNS != "*" && orDefault(ixn.SourceNS) != orDefault(id.Namespace) {
		return false
	}
	return ixn.SourceName == "*" || ixn.SourceName == id.Service
}

func orDefault(s string) string {
	if s == "" {
		return "default"
	}
	return strings.ToLower(s)
}

// intentionAge is how long ago the intention that decided was written,
// by Consul's clock, for the log (the time a deny took to act, when the
// clocks agree); 0 when unknown.
func intentionAge(ixn *api.Intention, now time.Time) time.Duration {
	if ixn == nil || ixn.UpdatedAt.IsZero() {
		return 0
	}
	return now.Sub(ixn.UpdatedAt)
}
