package intercept

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
)

// Manager installs, repairs, shows and removes meshlet's rules in the
// current network namespace. Its methods are safe to call concurrently
// (say, Verify from a readiness probe while a repair runs); they serialise.
type Manager struct {
	cfg Config
	ipt IPTables
	log *slog.Logger

	mu sync.Mutex // one reader-modifier of the rules at a time
}

// Option changes how NewManager builds a Manager.
type Option func(*Manager)

// WithLogger makes the Manager log the repairs Install makes to l.
// Without it, the Manager does not log.
func WithLogger(l *slog.Logger) Option {
	return func(m *Manager) { m.log = l }
}

// NewManager validates cfg and returns a Manager that applies it through ipt.
func NewManager(cfg Config, ipt IPTables, opts ...Option) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if ipt == nil {
		return nil, errors.New("intercept manager: nil IPTables")
	}
	m := &Manager{cfg: cfg, ipt: ipt, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(m)
	}
	return m, nil
}

// Install makes the namespace hold exactly our rules: chain ChainName with
// Config.Rules in order, and one jump to it at the top of nat OUTPUT. It is
// idempotent and repairing: a leftover of a killed run (duplicate jumps, a
// stale or missing rule, a missing chain) is put right, and when everything
// is already right nothing is touched, so a restart does not disturb the
// app's live traffic.
//
// A repair flushes and refills our chain and re-inserts the jump, so for
// the few milliseconds it takes the app's traffic may go unredirected.
func (m *Manager) Install() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.install(); err != nil {
		return fmt.Errorf("installing iptables rules in %s/%s: %w", Table, ChainName, err)
	}
	return nil
}

func (m *Manager) install() error {
	s, err := readState(m.ipt)
	if err != nil {
		return err
	}
	want := m.cfg.Rules()
	chainProblems, hookProblems := s.problems(want)
	if s.installed() && len(chainProblems)+len(hookProblems) > 0 {
		m.log.Warn("repairing iptables rules that differ from the config", "table", Table, "chain", ChainName,
			"problems", strings.Join(slices.Concat(chainProblems, hookProblems), "; "))
	}
	if len(chainProblems) > 0 {
		if err := m.fillChain(want); err != nil {
			return err
		}
	}
	if len(hookProblems) > 0 {
		if err := deleteJumps(m.ipt, s.jumps); err != nil {
			return err
		}
		if err := m.ipt.Insert(Table, HookChain, 1, jumpRule()...); err != nil {
			return fmt.Errorf("inserting jump %q at the top of %s/%s: %w", formatRuleArgs(jumpRule()), Table, HookChain, err)
		}
	}
	return nil
}

// fillChain replaces the rules of our chain with want. ClearChain creates
// the chain when it is missing, so a chain created meanwhile by another run
// is no error.
func (m *Manager) fillChain(want [][]string) error {
	if err := m.ipt.ClearChain(Table, ChainName); err != nil {
		return fmt.Errorf("creating or flushing chain: %w", err)
	}
	for _, r := range want {
		if err := m.ipt.Append(Table, ChainName, r...); err != nil {
			return fmt.Errorf("appending rule %q: %w", formatRuleArgs(r), err)
		}
	}
	return nil
}

// deleteJumps deletes each listed jump from HookChain. Delete removes the
// first rule matching a spec, so one call per listed copy removes them all.
func deleteJumps(ipt IPTables, jumps []jump) error {
	for _, j := range jumps {
		if err := ipt.Delete(Table, HookChain, j.spec...); err != nil {
			return fmt.Errorf("deleting jump %q (rule %d of %s/%s): %w", formatRuleArgs(j.spec), j.pos, Table, HookChain, err)
		}
	}
	return nil
}

// Remove deletes every jump to our chain from nat OUTPUT, then flushes and
// deletes the chain. Nothing installed is not an error, and no other rule or
// chain is touched.
func (m *Manager) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.remove(); err != nil {
		return fmt.Errorf("removing iptables rules from %s/%s: %w", Table, ChainName, err)
	}
	return nil
}

func (m *Manager) remove() error {
	s, err := readState(m.ipt)
	if err != nil {
		return err
	}
	if err := deleteJumps(m.ipt, s.jumps); err != nil {
		return err
	}
	if !s.chainExists {
		return nil
	}
	if err := m.ipt.ClearChain(Table, ChainName); err != nil {
		return fmt.Errorf("flushing chain: %w", err)
	}
	if err := m.ipt.DeleteChain(Table, ChainName); err != nil {
		return fmt.Errorf("deleting chain (does a chain other than %s still jump to it?): %w", HookChain, err)
	}
	return nil
}
