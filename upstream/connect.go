package upstream

// Consul Connect's mutual TLS toward instances (Config.MTLS): which
// instances are reached through their Connect sidecar, and the view's
// refusals that follow from the mode. connectdial.go dials them;
// intentions.go decides, as a caller, whether the app may call them.
//
// Every instance stays one endpoint, whatever its transport: an instance
// with a passing sidecar in /v1/health/connect/NAME gets the sidecar's
// address as its Addr (and MTLS set), so balancing, stickiness, retries,
// passive health and least-request see the same instances as over
// plaintext. Mesh.Dial knows a sidecar's address (mtlsState.dests) and
// makes the handshake there.

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/internal/consulerr"
)

// Codes of the X-Meshlet-Error header for mTLS refusals.
const (
	// ErrCodeNoMTLS: strict mTLS, and the service has no instance
	// reachable over mTLS, or the sidecar has no identity yet (503).
	ErrCodeNoMTLS = "no-mtls-instance"
	// ErrCodeDenied: a Consul intention denies the app's identity calls
	// to the service (403).
	ErrCodeDenied = "denied-by-intention"
)

// ChooseStatus is the HTTP status of the answer to a request that Choose
// refused with code: 403 for a deny intention, else 503.
func ChooseStatus(code string) int {
	if code == ErrCodeDenied {
		return 403
	}
	return 503
}

// destForget is how long a sidecar address that left every view is still
// dialled over mTLS: a request that picked it just before may dial it
// late (a retry, a pick reused by a connection), and must never send it
// plaintext.
const destForget = 10 * time.Minute

// mtlsState is the mesh's side of mTLS toward instances.
type mtlsState struct {
	on       bool // Config.MTLS is not off
	watching bool // on, and an identity source is set: the connect watches run
	// dests maps every sidecar address in a view (and those that left one
	// less than destForget ago) to its *connectDest.
	dests sync.Map
	// Handshakes made, resumed and failed, for MTLSStats.
	handshakes, resumed, failed atomic.Uint64
	// defaultAllow: what Consul decides when no intention matches
	// (intentions.go): 0 not known yet, 1 allow, 2 deny.
	defaultAllow atomic.Int32
	// defaultUnread: reading that default failed and was logged at Warn,
	// once until it succeeds.
	defaultUnread atomic.Bool
}

// connectDest is a sidecar address that Dial reaches over mTLS.
type connectDest struct {
	w       *serviceWatch
	removed atomic.Int64 // unix ns when it left the service's view; 0 while in it
}

// connectState is what a service watch knows of its instances' mTLS.
type connectState struct {
	// Guarded by serviceWatch.mu.
	//
	// sidecars maps an app instance (hostKey) to the address of its
	// passing sidecar; nil before Consul's first answer.
	sidecars map[string]string
	// settled: the connect watch answered or failed once, so requests
	// need not wait for it.
	settled bool
	// raw are the instances of the last health answer (or the state
	// file), as plaintext endpoints; rawFromDisk says which.
	raw         []Endpoint
	rawFromDisk bool
	dests       map[string]*connectDest // the service's entries of mtlsState.dests
	// why is, in strict mode, why no instance is routed ("" otherwise).
	why string

	tlsOnce sync.Once
	tls     *tls.Config // the client config toward the service's sidecars
	conns   connSet     // open mTLS connections to the service
	denied  atomic.Pointer[DeniedError]
	ixns    atomic.Pointer[[]*api.Intention] // the last intentions toward the service
	logs    logLimit                         // handshake failures
}

// MTLSStats counts the mTLS handshakes made with instances.
type MTLSStats struct {
	Handshakes uint64 `json:"handshakes"` // completed, resumed ones included
	Resumed    uint64 `json:"resumed"`
	Failed     uint64 `json:"failed"`
}

// MTLSStats returns the handshake counts so far.
func (m *Mesh) MTLSStats() MTLSStats {
	return MTLSStats{Handshakes: m.mtls.handshakes.Load(), Resumed: m.mtls.resumed.Load(), Failed: m.mtls.failed.Load()}
}

// identity is the app's own identity, once it is known.
func (m *Mesh) identity() (certs.ID, bool) {
	if m.cfg.ClientTLS == nil {
		return certs.ID{}, false
	}
	return m.cfg.ClientTLS.Identity()
}

// useSidecars reports whether instances are dialled at their sidecar:
// always in strict mode (which refuses instead while there is no
// identity), in permissive mode once the identity arrived.
func (m *Mesh) useSidecars() bool {
	if !m.mtls.watching {
		return false
	}
	if m.cfg.MTLS == MTLSStrict {
		return true
	}
	_, ok := m.identity()
	return ok
}

// connectOverlay turns the registered instances eps (from a health
// answer, or from the state file when fromDisk) into the endpoints a
// view routes on: at their sidecar when they have one and mTLS is used,
// only those in strict mode. It returns whether the update may release
// requests waiting for a first answer. w.mu is held.
func (w *serviceWatch) connectOverlay(eps []Endpoint, m *Mesh, fromDisk bool) ([]Endpoint, bool) {
	c := &w.connect
	base := make([]Endpoint, 0, len(eps))
	var saved map[string]string
	for _, e := range eps {
		if e.MTLS {
			// From the state file, or a view rebuilt: back to the app's
			// own address, keeping the sidecar in case Consul has not
			// said yet.
			if saved == nil {
				saved = map[string]string{}
			}
			saved[hostKey(e)] = e.Addr
			e.Addr, e.MTLS, e.AppAddr = e.AppAddr, false, ""
		}
		base = append(base, e)
	}
	c.raw, c.rawFromDisk = base, fromDisk
	if c.sidecars == nil && saved != nil {
		c.sidecars = saved
	}
	c.why = ""
	if !m.mtls.on {
		return base, true
	}
	strict := m.cfg.MTLS == MTLSStrict
	use := m.useSidecars()
	out := make([]Endpoint, 0, len(base))
	for _, e := range base {
		if sc, ok := c.sidecars[hostKey(e)]; ok && use {
			e.AppAddr, e.Addr, e.MTLS = e.Addr, sc, true
			out = append(out, e)
		} else if !strict {
			out = append(out, e)
		}
	}
	if strict && len(out) < len(base) {
		if len(out) == 0 {
			c.why = fmt.Sprintf("strict mTLS: none of the %d registered instances of service %q has a passing Connect sidecar in consul", len(base), w.name)
		}
		m.log.Debug("strict mTLS: leaving out instances without a passing Connect sidecar", "service", w.name,
			"left_out", len(base)-len(out), "mtls", len(out))
	}
	m.setDests(w, out)
	return out, c.settled || !m.mtls.watching
}

// subsetNoMTLS sets, in strict mode, why the subset w routes to none of
// its instances eps (its service's, overlaid and tagged): none of the
// tagged ones has a passing sidecar, though the service's others may.
// w.mu and its service's mu are held (pushSubsets and subsetWatch are the
// only callers that update a subset, with its service's mu held).
func (w *serviceWatch) subsetNoMTLS(eps []Endpoint, m *Mesh) {
	w.connect.why = ""
	if !m.mtls.on || m.cfg.MTLS != MTLSStrict || len(eps) > 0 {
		return
	}
	if n := len(withTag(w.sub.parent.connect.raw, w.sub.tag)); n > 0 {
		w.connect.why = fmt.Sprintf("strict mTLS: none of the %d registered instances of service %q with tag %q has a passing Connect sidecar in consul",
			n, w.sub.parent.name, w.sub.tag)
	}
}

// setDests makes the sidecar addresses of eps those Dial reaches over
// mTLS for w; addresses that left are forgotten destForget later. w.mu
// is held.
func (m *Mesh) setDests(w *serviceWatch, eps []Endpoint) {
	c := &w.connect
	now := time.Now().UnixNano()
	seen := map[string]bool{}
	for _, e := range eps {
		if !e.MTLS {
			continue
		}
		seen[e.Addr] = true
		d := c.dests[e.Addr]
		if d == nil {
			d = &connectDest{w: w}
			if c.dests == nil {
				c.dests = map[string]*connectDest{}
			}
			c.dests[e.Addr] = d
		}
		d.removed.Store(0)
		m.mtls.dests.Store(e.Addr, d)
	}
	for addr, d := range c.dests {
		if seen[addr] {
			continue
		}
		switch r := d.removed.Load(); {
		case r == 0:
			d.removed.Store(now)
		case now-r > int64(destForget):
			m.mtls.dests.CompareAndDelete(addr, d)
			delete(c.dests, addr)
		}
	}
}

// destOf returns the watch whose sidecar is at addr, or nil.
func (m *Mesh) destOf(addr string) *serviceWatch {
	if !m.mtls.on {
		return nil
	}
	if d, ok := m.mtls.dests.Load(addr); ok {
		return d.(*connectDest).w
	}
	return nil
}

// connectSource is the part of Consul's health API the connect watch
// needs; *api.Health has it.
type connectSource interface {
	Connect(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

// runConnect watches the service's Connect-capable instances
// (/v1/health/connect/NAME, passing only) until ctx is done.
func (w *serviceWatch) runConnect(ctx context.Context, m *Mesh) {
	src := connectSource(m.cfg.Consul.Health())
	what := fmt.Sprintf("connect sidecars of %q", w.name)
	q := &blockingQuery[[]*api.ServiceEntry]{
		what: what,
		fetch: func(ctx context.Context, waitIndex uint64) ([]*api.ServiceEntry, uint64, error) {
			opts := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: m.cfg.WaitTime}).WithContext(ctx)
			entries, meta, err := src.Connect(w.name, "", true, opts)
			if err != nil {
				return nil, 0, fmt.Errorf("asking consul for the connect sidecars of %q: %w", w.name, consulerr.Explain(err))
			}
			// Consul filters the sidecars by the proxy's own service name,
			// which is NAME-sidecar-proxy unless registered otherwise.
			m.acl.note(what, meta.ResultsFilteredByACLs,
				fmt.Sprintf("service:read on %q (the name of its Connect sidecars) or node:read on their nodes", w.name+"-sidecar-proxy"), true, m.log)
			return entries, meta.LastIndex, nil
		},
		waitTime:    m.cfg.WaitTime,
		callTimeout: m.cfg.CallTimeout,
		live:        &m.catalog.live,
		apply: func(entries []*api.ServiceEntry) {
			sc, skipped := sidecarsFromHealth(entries)
			if len(skipped) > 0 {
				m.log.Warn("ignoring connect sidecars without an address, a port or a destination instance", "service", w.name, "ids", skipped)
			}
			w.setSidecars(sc, m)
		},
		failed: func(_ error, streak int) {
			m.watchErrors.Add(1)
			if streak == 1 {
				w.connectSettled(m) // the health answer alone routes meanwhile
			}
		},
		backoff: m.cfg.RetryBackoff,
		log:     m.log,
	}
	q.run(ctx)
}

// setSidecars takes the connect watch's answer and rebuilds the view.
func (w *serviceWatch) setSidecars(sc map[string]string, m *Mesh) {
	w.mu.Lock()
	c := &w.connect
	changed := c.sidecars == nil || !maps.Equal(c.sidecars, sc) || !c.settled
	c.sidecars, c.settled = sc, true
	w.rebuildLocked(changed, m)
}

// connectSettled lets requests go without the connect watch's answer.
func (w *serviceWatch) connectSettled(m *Mesh) {
	w.mu.Lock()
	first := !w.connect.settled
	w.connect.settled = true
	w.rebuildLocked(first, m)
}

// reroute rebuilds the view on the last instances, for a change that is
// not Consul's (the identity arrived).
func (w *serviceWatch) reroute(m *Mesh) {
	w.mu.Lock()
	w.rebuildLocked(true, m)
}

// rebuildLocked rebuilds the view on connect.raw, when want and there is
// a view, in the critical section the caller began: w.mu is held, and
// released here.
func (w *serviceWatch) rebuildLocked(want bool, m *Mesh) {
	if !want || w.view.Load() == nil {
		w.mu.Unlock()
		return
	}
	fromDisk := w.connect.rawFromDisk
	same, release := w.updateLocked(w.connect.raw, m, fromDisk)
	w.mu.Unlock()
	w.updated(m, fromDisk, same, release)
}

// sidecarsFromHealth maps each app instance (hostKey) of a connect
// answer to the address its mTLS is served at: its sidecar proxy's, or
// its own for a Connect-native instance. Entries that say neither where
// nor for which instance are returned in skipped.
func sidecarsFromHealth(entries []*api.ServiceEntry) (sc map[string]string, skipped []string) {
	sc = map[string]string{}
	// Sorted, so that an instance with two sidecars always gets the same.
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b *api.ServiceEntry) int {
		if a == nil || a.Service == nil || b == nil || b.Service == nil {
			return 0
		}
		return cmp.Compare(a.Service.ID, b.Service.ID)
	})
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		s := e.Service
		node, host := "", s.Address
		if e.Node != nil {
			node = e.Node.Node
			if host == "" {
				host = e.Node.Address
			}
		}
		if e.Checks.AggregatedStatus() != api.HealthPassing {
			continue
		}
		var app string
		switch {
		case s.Kind == api.ServiceKindConnectProxy && s.Proxy != nil:
			app = s.Proxy.DestinationServiceID
		case s.Kind == "" && s.Connect != nil && s.Connect.Native:
			app = s.ID
		}
		if app == "" || host == "" || s.Port <= 0 || s.Port > 65535 {
			skipped = append(skipped, s.ID)
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			host = ip.Unmap().WithZone("").String()
		}
		key := node + "\x00" + app
		if _, dup := sc[key]; !dup {
			sc[key] = net.JoinHostPort(host, strconv.Itoa(s.Port))
		}
	}
	return sc, skipped
}

// mtlsRefusal returns the code and message of a request for the service
// of w that mTLS refuses, or "" when it may go: strict mode without an
// identity, or a deny intention. Strict mode without an instance over
// mTLS refuses only when the view routes to nothing (noMTLSRefusal): the
// instances settling after an agent restart, whose sidecars' checks have
// not run yet, still take traffic meanwhile.
func (m *Mesh) mtlsRefusal(w *serviceWatch, v *serviceView) (code, msg string) {
	if !m.mtls.on {
		return "", ""
	}
	if p := w.sub.parent; p != nil {
		// A subset has no connect state of its own: its service's
		// intentions and strict refusal decide, as they do for the
		// sidecars Dial reaches under the service's watch.
		pv := p.view.Load()
		if pv == nil {
			pv = v
		}
		w, v = p, pv
	}
	strict := m.cfg.MTLS == MTLSStrict
	if strict {
		if _, ok := m.identity(); !ok {
			return ErrCodeNoMTLS, fmt.Sprintf("meshlet: strict mTLS: no identity to call service %q with yet (no leaf certificate from consul)", w.name)
		}
	}
	// Intentions decide for services that take part in Connect.
	if d := w.connect.denied.Load(); d != nil && (strict || v.hasMTLS) {
		return ErrCodeDenied, "meshlet: " + d.Error()
	}
	return "", ""
}

// noMTLSRefusal returns why strict mTLS routes to no instance of the
// service of w, "" when that is not why: for a view that has no set to
// route on at the moment.
func (m *Mesh) noMTLSRefusal(w *serviceWatch, v *serviceView) string {
	if !m.mtls.on {
		return ""
	}
	if v.noMTLS != "" {
		return v.noMTLS
	}
	if p := w.sub.parent; p != nil {
		if pv := p.view.Load(); pv != nil {
			return pv.noMTLS
		}
	}
	return ""
}

// startConnectWatchesLocked starts the watches of w's sidecars and of the
// intentions toward it, when mTLS is on and the app may have an
// identity; m.mu is held.
func (m *Mesh) startConnectWatchesLocked(ctx context.Context, w *serviceWatch) {
	if !m.mtls.watching {
		return
	}
	m.watchers.Add(2)
	go func() {
		defer m.watchers.Done()
		w.runConnect(ctx, m)
	}()
	go func() {
		defer m.watchers.Done()
		w.runIntentions(ctx, m)
	}()
}

// identityPoll is how often awaitIdentity looks for the identity when the
// ClientTLS cannot say when it arrives.
const identityPoll = 100 * time.Millisecond

// awaitIdentity waits, until ctx is done, for the app's identity to
// arrive when it has not yet, then reroutes every service over mTLS and
// applies the intentions to it.
func (m *Mesh) awaitIdentity(ctx context.Context) {
	if !m.mtls.watching {
		return
	}
	if _, ok := m.identity(); ok {
		return
	}
	var ready <-chan struct{}
	if r, ok := m.cfg.ClientTLS.(interface{ Ready() <-chan struct{} }); ok {
		ready = r.Ready()
	}
	tick := time.NewTicker(identityPoll)
	defer tick.Stop()
	for {
		if _, ok := m.identity(); ok {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-ready:
			ready = nil // Ready may come before Identity says so: the tick looks again
		case <-tick.C:
		}
	}
	id, _ := m.identity()
	m.log.Info("mTLS identity arrived: instances with a Connect sidecar are reached over mTLS from now on", "identity", id.String())
	for _, name := range m.watchedNames() {
		w := m.watchOf(name)
		if w == nil || w.sub.parent != nil {
			// A subset has no instances of its own to reroute (its
			// connect.raw is empty): its service's reroute pushes to it.
			continue
		}
		w.reroute(m)
		m.decide(w)
	}
}
