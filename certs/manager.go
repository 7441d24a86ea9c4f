package certs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/backoff"
)

// Consul is what certs asks of the local Consul agent; *api.Agent has it.
// Both calls are blocking queries: with q.WaitIndex set they answer when
// the result changes or q.WaitTime passes. The leaf is asked for by the
// service's name, not its ID.
type Consul interface {
	ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error)
	ConnectCALeaf(serviceName string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error)
}

// Defaults of Config.
const (
	DefaultWaitTime = 5 * time.Minute
	// DefaultExpiryCheck is how often the leaf's remaining lifetime is
	// looked at.
	DefaultExpiryCheck = 30 * time.Second
)

// Config configures a Manager.
type Config struct {
	Consul  Consul
	Service string // the app's service name: the leaf's identity
	// WaitTime is the longest a blocking query waits for a change (Consul
	// caps it at 10 minutes). Each query's deadline is WaitTime plus
	// Consul's jitter (WaitTime/16) plus a margin.
	WaitTime time.Duration
	// Backoff between failed queries; default full jitter from 250 ms to 10 s.
	Backoff     func(attempt int) time.Duration
	ExpiryCheck time.Duration
	Log         *slog.Logger
	Now         func() time.Time // the clock; time.Now when nil (tests set it)
}

// Manager watches the trust material and hands out tls.Configs on it.
type Manager struct {
	cfg   Config
	state atomic.Pointer[material]

	mu        sync.Mutex // serializes writers of state and the fields below
	ready     chan struct{}
	readyOnce sync.Once
	rootsErr  error // last failure of the roots watch, nil after an answer
	leafErr   error
	warnedFor string    // serial of the leaf the last expiry warning was about
	warnedAt  time.Time // when it was logged
}

// New checks cfg and returns a Manager; Run starts it.
func New(cfg Config) (*Manager, error) {
	if cfg.Consul == nil {
		return nil, errors.New("certs: no consul client")
	}
	if cfg.Service == "" {
		return nil, errors.New("certs: no service name")
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = DefaultWaitTime
	}
	if cfg.Backoff == nil {
		cfg.Backoff = backoff.FullJitter(250*time.Millisecond, 10*time.Second)
	}
	if cfg.ExpiryCheck <= 0 {
		cfg.ExpiryCheck = DefaultExpiryCheck
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Manager{cfg: cfg, ready: make(chan struct{})}
	m.state.Store(&material{})
	return m, nil
}

// Ready is closed once the first roots and the first leaf have arrived.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Run watches roots and leaf until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		m.watch(ctx, "CA roots", func(q *api.QueryOptions) (uint64, error) {
			list, meta, err := m.cfg.Consul.ConnectCARoots(q)
			if err != nil {
				return 0, err
			}
			return meta.LastIndex, m.setRoots(list)
		}, &m.rootsErr)
	}()
	go func() {
		defer wg.Done()
		m.watch(ctx, fmt.Sprintf("leaf of %q", m.cfg.Service), func(q *api.QueryOptions) (uint64, error) {
			lc, meta, err := m.cfg.Consul.ConnectCALeaf(m.cfg.Service, q)
			if err != nil {
				return 0, err
			}
			return meta.LastIndex, m.setLeaf(lc)
		}, &m.leafErr)
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(m.cfg.ExpiryCheck)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.checkExpiry()
			}
		}
	}()
	wg.Wait()
}

// watch runs one blocking query in a loop. fetch applies a good answer
// itself (the answer is small and applying an unchanged one is harmless)
// and returns its index. The index rules are Consul's: never block on
// index 0, start again from 0 when the index goes backwards (a restarted
// agent or a restored snapshot), and ask without blocking after a failure.
func (m *Manager) watch(ctx context.Context, what string, fetch func(*api.QueryOptions) (uint64, error), lastErr *error) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, m.cfg.WaitTime+m.cfg.WaitTime/16+10*time.Second)
		next, err := fetch((&api.QueryOptions{WaitIndex: index, WaitTime: m.cfg.WaitTime}).WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			m.mu.Lock()
			*lastErr = err
			m.mu.Unlock()
			if failures == 1 {
				m.cfg.Log.Warn("certs: consul query failed, retrying with backoff; the last roots and leaf keep serving", "query", what, "err", err)
			} else {
				m.cfg.Log.Debug("certs: consul query failed again", "query", what, "err", err, "failures", failures)
			}
			index = 0
			t := time.NewTimer(m.cfg.Backoff(failures))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if failures > 0 {
			m.cfg.Log.Info("certs: consul answers again", "query", what, "failures", failures)
			failures = 0
		}
		m.mu.Lock()
		*lastErr = nil
		m.mu.Unlock()
		switch {
		case next == 0:
			index = 1 // index 0 would make the next query return at once
		case next < index:
			index = 0
		default:
			index = next
		}
	}
}

// setRoots publishes a new root pool with the current leaf.
func (m *Manager) setRoots(list *api.CARootList) error {
	pool, n, bad, err := parseRoots(list)
	if err != nil {
		return err
	}
	for _, b := range bad {
		m.cfg.Log.Warn("certs: leaving out a CA root that does not parse", "err", b)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	next := *m.state.Load()
	changed := next.activeRoot != list.ActiveRootID || next.rootCount != n
	next.roots, next.rootCount, next.activeRoot, next.trustDomain = pool, n, list.ActiveRootID, list.TrustDomain
	m.publish(&next)
	if changed {
		m.cfg.Log.Info("certs: CA roots", "trust_domain", list.TrustDomain, "roots", n, "active", list.ActiveRootID)
	}
	return nil
}

// setLeaf publishes a new leaf with the current roots.
func (m *Manager) setLeaf(lc *api.LeafCert) error {
	cert, id, err := parseLeaf(m.cfg.Service, lc)
	if err != nil {
		return err
	}
	serial := SerialString(cert.Leaf.SerialNumber)
	m.mu.Lock()
	defer m.mu.Unlock()
	next := *m.state.Load()
	if next.leafSerial == serial {
		return nil
	}
	next.leaf, next.leafID, next.leafSerial = cert, id, serial
	m.publish(&next)
	m.cfg.Log.Info("certs: leaf", "uri", id.String(), "serial", serial, "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// publish stores next; the caller holds m.mu.
func (m *Manager) publish(next *material) {
	m.state.Store(next)
	if next.ready() {
		m.readyOnce.Do(func() { close(m.ready) })
	}
}

// expiryWarning says what is wrong with the leaf's remaining lifetime at
// now, or "". Consul's agent renews a leaf at a random time between 60 %
// and 90 % of its lifetime, so a leaf with less than 5 % of it left (3.6 h
// of Consul's default 72 h) missed its renewal: the warning is never
// spurious, and still comes hours before a default leaf expires.
func expiryWarning(m *material, now time.Time) string {
	if m.leaf == nil {
		return ""
	}
	left, lifetime := lifetimeLeft(m.leaf.Leaf, now)
	threshold := lifetime / 20
	switch {
	case left <= 0:
		return fmt.Sprintf("leaf %s expired at %s and was not renewed: peers refuse it", m.leafSerial, m.leaf.Leaf.NotAfter.UTC().Format(time.RFC3339))
	case left < threshold:
		return fmt.Sprintf("leaf %s expires in %s and was not renewed", m.leafSerial, left.Round(time.Second))
	}
	return ""
}

// checkExpiry logs the expiry warning, once per leaf and then every ten
// minutes while it holds.
func (m *Manager) checkExpiry() {
	now := m.cfg.Now()
	cur := m.state.Load()
	w := expiryWarning(cur, now)
	if w == "" {
		return
	}
	m.mu.Lock()
	due := m.warnedFor != cur.leafSerial || now.Sub(m.warnedAt) >= 10*time.Minute
	if due {
		m.warnedFor, m.warnedAt = cur.leafSerial, now
	}
	consulErr := errors.Join(m.rootsErr, m.leafErr)
	m.mu.Unlock()
	if due {
		m.cfg.Log.Warn("certs: "+w, "consul_err", consulErr)
	}
}

// Snapshot is what /v1/state shows of the trust material.
type Snapshot struct {
	Ready        bool      `json:"ready"`
	Service      string    `json:"service"`
	TrustDomain  string    `json:"trust_domain,omitempty"`
	Roots        int       `json:"roots"`
	ActiveRoot   string    `json:"active_root,omitempty"`
	LeafURI      string    `json:"leaf_uri,omitempty"`
	LeafSerial   string    `json:"leaf_serial,omitempty"`
	LeafNotAfter time.Time `json:"leaf_not_after,omitzero"`
	// Warnings: the leaf near or past its expiry without renewal, and
	// failing watches.
	Warnings []string `json:"warnings,omitempty"`
}

// Snapshot returns the current state.
func (m *Manager) Snapshot() Snapshot {
	cur := m.state.Load()
	s := Snapshot{Ready: cur.ready(), Service: m.cfg.Service, TrustDomain: cur.trustDomain, Roots: cur.rootCount, ActiveRoot: cur.activeRoot}
	if cur.leaf != nil {
		s.LeafURI, s.LeafSerial, s.LeafNotAfter = cur.leafID.String(), cur.leafSerial, cur.leaf.Leaf.NotAfter.UTC()
	}
	if w := expiryWarning(cur, m.cfg.Now()); w != "" {
		s.Warnings = append(s.Warnings, w)
	}
	m.mu.Lock()
	if m.rootsErr != nil {
		s.Warnings = append(s.Warnings, "consul CA roots: "+m.rootsErr.Error())
	}
	if m.leafErr != nil {
		s.Warnings = append(s.Warnings, "consul leaf: "+m.leafErr.Error())
	}
	m.mu.Unlock()
	return s
}

// Identity returns the app's own identity, once a leaf arrived.
func (m *Manager) Identity() (ID, bool) {
	cur := m.state.Load()
	return cur.leafID, cur.leaf != nil
}
