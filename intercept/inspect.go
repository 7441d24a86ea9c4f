package intercept

import (
	"fmt"
	"strings"
)

// DriftError is what Verify returns when the namespace does not hold
// exactly our rules. Install repairs every problem it lists.
type DriftError struct {
	// Problems says what differs, one human-readable sentence each.
	Problems []string
}

// Error lists the problems.
func (e *DriftError) Error() string {
	return fmt.Sprintf("iptables rules in %s/%s differ from the config: %s", Table, ChainName, strings.Join(e.Problems, "; "))
}

// Verify returns nil when our chain holds exactly Config.Rules and exactly
// one jump to it is the first rule of nat OUTPUT. When they differ it
// returns a *DriftError saying what differs (for readiness, and to decide on
// a repair); when the rules cannot be read it returns that error.
func (m *Manager) Verify() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := readState(m.ipt)
	if err != nil {
		return fmt.Errorf("verifying iptables rules in %s/%s: %w", Table, ChainName, err)
	}
	chain, hook := s.problems(m.cfg.Rules())
	if problems := append(chain, hook...); len(problems) > 0 {
		return &DriftError{Problems: problems}
	}
	return nil
}

// Show describes our rules for a person: the jumps to our chain in nat
// OUTPUT with their positions, our chain's rules, and whether they match the
// config. It returns "not installed" when neither chain nor jump exists.
func (m *Manager) Show() (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, err := readState(m.ipt)
	if err != nil {
		return "", fmt.Errorf("showing iptables rules in %s/%s: %w", Table, ChainName, err)
	}
	if !s.installed() {
		return "not installed", nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%s:\n", Table, HookChain)
	if len(s.jumps) == 0 {
		fmt.Fprintf(&b, "  (no jump to %s)\n", ChainName)
	}
	for _, j := range s.jumps {
		fmt.Fprintf(&b, "  rule %d: -A %s %s\n", j.pos, HookChain, formatRuleArgs(j.spec))
	}
	fmt.Fprintf(&b, "%s/%s:\n", Table, ChainName)
	switch {
	case !s.chainExists:
		b.WriteString("  (chain does not exist)\n")
	case len(s.rules) == 0:
		b.WriteString("  (chain is empty)\n")
	}
	for i, r := range s.rules {
		fmt.Fprintf(&b, "  rule %d: -A %s %s\n", i+1, ChainName, formatRuleArgs(r))
	}
	chain, hook := s.problems(m.cfg.Rules())
	if problems := append(chain, hook...); len(problems) > 0 {
		fmt.Fprintf(&b, "differs from the config:\n  %s\n", strings.Join(problems, "\n  "))
	} else {
		b.WriteString("matches the config\n")
	}
	return b.String(), nil
}
