package intercept

import (
	"fmt"
	"slices"
)

// jump is one rule of HookChain whose target is ChainName.
type jump struct {
	pos  int      // 1-based position among the rules of HookChain
	spec []string // the rule spec, usable with Delete
}

// state is what the namespace holds that concerns us. Everything else in
// the table is neither read into it nor ever changed.
type state struct {
	chainExists bool
	rules       [][]string // rule specs of ChainName, in order
	jumps       []jump     // rules of HookChain that lead to ChainName
}

// installed reports whether anything of ours is present.
func (s state) installed() bool {
	return s.chainExists || len(s.jumps) > 0
}

// readState lists HookChain and ChainName.
func readState(ipt IPTables) (state, error) {
	var s state
	hook, err := listRules(ipt, HookChain)
	if err != nil {
		return state{}, err
	}
	for i, spec := range hook {
		if targetOf(spec) == ChainName {
			s.jumps = append(s.jumps, jump{pos: i + 1, spec: spec})
		}
	}
	s.chainExists, err = ipt.ChainExists(Table, ChainName)
	if err != nil {
		return state{}, fmt.Errorf("checking for chain %s/%s: %w", Table, ChainName, err)
	}
	if s.chainExists {
		if s.rules, err = listRules(ipt, ChainName); err != nil {
			return state{}, err
		}
	}
	return s, nil
}

// listRules returns the rule specs of one chain of Table, in order.
func listRules(ipt IPTables, chain string) ([][]string, error) {
	return listRulesIn(ipt, Table, chain)
}

// listRulesIn returns the rule specs of one chain of table, in order.
func listRulesIn(ipt IPTables, table, chain string) ([][]string, error) {
	lines, err := ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("listing chain %s/%s: %w", table, chain, err)
	}
	var specs [][]string
	for _, line := range lines {
		l, err := parseRuleLine(line)
		if err != nil {
			return nil, fmt.Errorf("listing chain %s/%s: %w", table, chain, err)
		}
		if l.op == "-A" && l.chain == chain {
			specs = append(specs, l.args)
		}
	}
	return specs, nil
}

// problems compares s with want, the rules our chain should hold, and says
// what differs: in our chain, and in the jumps from HookChain. Neither list
// has entries exactly when s is what Install produces.
func (s state) problems(want [][]string) (chain, hook []string) {
	if !s.chainExists {
		chain = append(chain, fmt.Sprintf("chain %s/%s does not exist", Table, ChainName))
	} else {
		for i := range max(len(want), len(s.rules)) {
			switch {
			case i >= len(s.rules):
				chain = append(chain, fmt.Sprintf("rule %d is missing, want %q", i+1, formatRuleArgs(want[i])))
			case i >= len(want):
				chain = append(chain, fmt.Sprintf("rule %d %q is not ours", i+1, formatRuleArgs(s.rules[i])))
			case !slices.Equal(s.rules[i], want[i]):
				chain = append(chain, fmt.Sprintf("rule %d is %q, want %q", i+1, formatRuleArgs(s.rules[i]), formatRuleArgs(want[i])))
			}
		}
	}
	switch len(s.jumps) {
	case 0:
		hook = append(hook, fmt.Sprintf("no jump from %s/%s to %s", Table, HookChain, ChainName))
	case 1:
		j := s.jumps[0]
		if j.pos != 1 {
			hook = append(hook, fmt.Sprintf("the jump to %s is rule %d of %s/%s, want rule 1", ChainName, j.pos, Table, HookChain))
		}
		if !slices.Equal(j.spec, jumpRule()) {
			hook = append(hook, fmt.Sprintf("the jump to %s is %q, want %q", ChainName, formatRuleArgs(j.spec), formatRuleArgs(jumpRule())))
		}
	default:
		hook = append(hook, fmt.Sprintf("%d jumps from %s/%s to %s, want 1", len(s.jumps), Table, HookChain, ChainName))
	}
	return chain, hook
}
