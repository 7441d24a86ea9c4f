package intercept

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The strict mode's rules (--mtls=strict) live in a chain of their own in
// the filter table, jumped to from the top of INPUT: they drop nothing
// meshlet's redirect rules do, and are removed the same way.
const (
	StrictTable = "filter"
	StrictChain = "MESHLET_INBOUND"
	StrictHook  = "INPUT"
)

// StrictRules are the rule specs of StrictChain that keep every caller
// but the namespace itself off ports: a connection that comes in on
// loopback (meshlet's inbound listener, the app's own probes, anything
// inside the namespace, since the kernel routes the namespace's own
// addresses over lo) passes; any other TCP connection to them is reset.
// A reset, not a drop, so that a caller that should have used mTLS learns
// it at once rather than after its connect timeout.
func StrictRules(ports []uint16) [][]string {
	rules := [][]string{{"-i", "lo", "-j", "RETURN"}}
	for _, p := range ports {
		rules = append(rules, []string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(p)), "-j", "REJECT", "--reject-with", "tcp-reset"})
	}
	return rules
}

// Strict installs, checks and removes the strict mode's rules in the
// current network namespace. Its methods serialise.
type Strict struct {
	ipt IPTables

	mu    sync.Mutex
	ports []uint16 // the ports protected by the last Protect
}

// NewStrict returns a Strict that works through ipt.
func NewStrict(ipt IPTables) (*Strict, error) {
	if ipt == nil {
		return nil, errors.New("intercept strict: nil IPTables")
	}
	return &Strict{ipt: ipt}, nil
}

// Protect makes ports reachable from the namespace alone: it fills
// StrictChain with StrictRules(ports) and makes one jump to it the first
// rule of INPUT. It is idempotent and replaces what an earlier Protect,
// or a killed run, left.
func (s *Strict) Protect(ports ...uint16) error {
	if len(ports) == 0 {
		return errors.New("intercept strict: no port to protect")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.protect(ports); err != nil {
		return fmt.Errorf("installing strict-mode rules in %s/%s: %w", StrictTable, StrictChain, err)
	}
	s.ports = slices.Clone(ports)
	return nil
}

func (s *Strict) protect(ports []uint16) error {
	if err := s.ipt.ClearChain(StrictTable, StrictChain); err != nil {
		return fmt.Errorf("creating or flushing chain: %w", err)
	}
	for _, r := range StrictRules(ports) {
		if err := s.ipt.Append(StrictTable, StrictChain, r...); err != nil {
			return fmt.Errorf("appending rule %q: %w", formatRuleArgs(r), err)
		}
	}
	jumps, err := s.jumps()
	if err != nil {
		return err
	}
	if len(jumps) == 1 && jumps[0].pos == 1 && slices.Equal(jumps[0].spec, strictJump()) {
		return nil
	}
	for _, j := range jumps {
		if err := s.ipt.Delete(StrictTable, StrictHook, j.spec...); err != nil {
			return fmt.Errorf("deleting jump %q: %w", formatRuleArgs(j.spec), err)
		}
	}
	if err := s.ipt.Insert(StrictTable, StrictHook, 1, strictJump()...); err != nil {
		return fmt.Errorf("inserting jump at the top of %s/%s: %w", StrictTable, StrictHook, err)
	}
	return nil
}

func strictJump() []string { return []string{"-j", StrictChain} }

// jumps lists the rules of INPUT that lead to StrictChain.
func (s *Strict) jumps() ([]jump, error) {
	hook, err := listRulesIn(s.ipt, StrictTable, StrictHook)
	if err != nil {
		return nil, err
	}
	var out []jump
	for i, spec := range hook {
		if targetOf(spec) == StrictChain {
			out = append(out, jump{pos: i + 1, spec: spec})
		}
	}
	return out, nil
}

// Verify returns nil when the rules of the last Protect are in place (or
// Protect was never called), and says what differs otherwise.
func (s *Strict) Verify() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports == nil {
		return nil
	}
	var problems []string
	exists, err := s.ipt.ChainExists(StrictTable, StrictChain)
	if err != nil {
		return fmt.Errorf("verifying strict-mode rules: %w", err)
	}
	if !exists {
		problems = append(problems, fmt.Sprintf("chain %s/%s does not exist", StrictTable, StrictChain))
	} else {
		have, err := listRulesIn(s.ipt, StrictTable, StrictChain)
		if err != nil {
			return fmt.Errorf("verifying strict-mode rules: %w", err)
		}
		if want := StrictRules(s.ports); !slices.EqualFunc(have, want, slices.Equal) {
			problems = append(problems, fmt.Sprintf("chain %s holds %d rules that differ from the %d wanted", StrictChain, len(have), len(want)))
		}
	}
	jumps, err := s.jumps()
	if err != nil {
		return fmt.Errorf("verifying strict-mode rules: %w", err)
	}
	if len(jumps) != 1 || jumps[0].pos != 1 {
		problems = append(problems, fmt.Sprintf("want one jump to %s as rule 1 of %s/%s, have %d", StrictChain, StrictTable, StrictHook, len(jumps)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("strict-mode rules differ: %s", strings.Join(problems, "; "))
	}
	return nil
}

// Remove deletes every jump to StrictChain from INPUT, then the chain.
// Nothing installed is no error; no other rule is touched.
func (s *Strict) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ports = nil
	jumps, err := s.jumps()
	if err != nil {
		return fmt.Errorf("removing strict-mode rules: %w", err)
	}
	// Delete removes the first match, so one call per listed copy.
	for _, j := range jumps {
		if err := s.ipt.Delete(StrictTable, StrictHook, j.spec...); err != nil {
			return fmt.Errorf("removing strict-mode rules: deleting jump %q: %w", formatRuleArgs(j.spec), err)
		}
	}
	exists, err := s.ipt.ChainExists(StrictTable, StrictChain)
	if err != nil || !exists {
		return err
	}
	if err := s.ipt.ClearChain(StrictTable, StrictChain); err != nil {
		return fmt.Errorf("removing strict-mode rules: flushing chain: %w", err)
	}
	if err := s.ipt.DeleteChain(StrictTable, StrictChain); err != nil {
		return fmt.Errorf("removing strict-mode rules: deleting chain: %w", err)
	}
	return nil
}
