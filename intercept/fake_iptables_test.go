package intercept

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// fakeIPTables is a map-backed IPTables that refuses what the kernel
// refuses (a chain that exists twice, deleting a referenced or non-empty
// chain, a jump to a missing chain, deleting a missing rule), so that a
// sequence of calls that works here is one that works on a real kernel.
type fakeIPTables struct {
	tables map[string]*fakeTable
	// fail, when set, is asked before every call; a non-nil result is
	// returned instead of running the call.
	fail func(op, table, chain string) error
}

type fakeTable struct {
	builtin []string            // built-in chains, in `iptables -S` order
	user    []string            // user chains, in creation order
	rules   map[string][]string // chain → rule specs, each formatted as one string
}

// builtinTargets are targets that are not chains.
var builtinTargets = []string{"ACCEPT", "DROP", "RETURN", "REDIRECT", "DNAT", "SNAT", "MASQUERADE", "REJECT", "LOG", "MARK"}

func newFakeIPTables() *fakeIPTables {
	return &fakeIPTables{tables: map[string]*fakeTable{
		"nat": {
			builtin: []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
			rules:   map[string][]string{"PREROUTING": nil, "INPUT": nil, "OUTPUT": nil, "POSTROUTING": nil},
		},
		"filter": {
			builtin: []string{"INPUT", "FORWARD", "OUTPUT"},
			rules:   map[string][]string{"INPUT": nil, "FORWARD": nil, "OUTPUT": nil},
		},
	}}
}

func (f *fakeIPTables) table(op, table, chain string) (*fakeTable, error) {
	if f.fail != nil {
		if err := f.fail(op, table, chain); err != nil {
			return nil, err
		}
	}
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("fake iptables: can't initialize iptables table `%s': Table does not exist", table)
	}
	return t, nil
}

func (f *fakeIPTables) chain(op, table, chain string) (*fakeTable, error) {
	t, err := f.table(op, table, chain)
	if err != nil {
		return nil, err
	}
	if _, ok := t.rules[chain]; !ok {
		return nil, fmt.Errorf("fake iptables: %s %s/%s: No chain/target/match by that name", op, table, chain)
	}
	return t, nil
}

func (t *fakeTable) checkTarget(spec []string) error {
	target := targetOf(spec)
	if target == "" || slices.Contains(builtinTargets, target) {
		return nil
	}
	if _, ok := t.rules[target]; !ok || slices.Contains(t.builtin, target) {
		return fmt.Errorf("fake iptables: Couldn't load target `%s'", target)
	}
	return nil
}

func (f *fakeIPTables) ChainExists(table, chain string) (bool, error) {
	t, err := f.table("ChainExists", table, chain)
	if err != nil {
		return false, err
	}
	_, ok := t.rules[chain]
	return ok, nil
}

func (f *fakeIPTables) NewChain(table, chain string) error {
	t, err := f.table("NewChain", table, chain)
	if err != nil {
		return err
	}
	if _, ok := t.rules[chain]; ok {
		return fmt.Errorf("fake iptables: chain %s/%s: Chain already exists", table, chain)
	}
	t.user = append(t.user, chain)
	t.rules[chain] = nil
	return nil
}

// ClearChain behaves as go-iptables': it creates a missing chain.
func (f *fakeIPTables) ClearChain(table, chain string) error {
	t, err := f.table("ClearChain", table, chain)
	if err != nil {
		return err
	}
	if _, ok := t.rules[chain]; !ok {
		t.user = append(t.user, chain)
	}
	t.rules[chain] = nil
	return nil
}

func (f *fakeIPTables) DeleteChain(table, chain string) error {
	t, err := f.chain("DeleteChain", table, chain)
	if err != nil {
		return err
	}
	if slices.Contains(t.builtin, chain) {
		return fmt.Errorf("fake iptables: cannot delete built-in chain %s", chain)
	}
	if len(t.rules[chain]) > 0 {
		return fmt.Errorf("fake iptables: chain %s/%s: Directory not empty", table, chain)
	}
	for c, rules := range t.rules {
		for _, r := range rules {
			if spec, _ := splitRuleArgs(r); targetOf(spec) == chain {
				return fmt.Errorf("fake iptables: chain %s/%s referenced from %s: Too many links", table, chain, c)
			}
		}
	}
	delete(t.rules, chain)
	t.user = slices.DeleteFunc(t.user, func(c string) bool { return c == chain })
	return nil
}

func (f *fakeIPTables) Exists(table, chain string, rulespec ...string) (bool, error) {
	t, err := f.chain("Exists", table, chain)
	if err != nil {
		return false, err
	}
	return slices.Contains(t.rules[chain], formatRuleArgs(rulespec)), nil
}

func (f *fakeIPTables) Insert(table, chain string, pos int, rulespec ...string) error {
	t, err := f.chain("Insert", table, chain)
	if err != nil {
		return err
	}
	if pos < 1 || pos > len(t.rules[chain])+1 {
		return fmt.Errorf("fake iptables: Index of insertion too big: %d", pos)
	}
	if err := t.checkTarget(rulespec); err != nil {
		return err
	}
	t.rules[chain] = slices.Insert(t.rules[chain], pos-1, formatRuleArgs(rulespec))
	return nil
}

func (f *fakeIPTables) Append(table, chain string, rulespec ...string) error {
	t, err := f.chain("Append", table, chain)
	if err != nil {
		return err
	}
	if err := t.checkTarget(rulespec); err != nil {
		return err
	}
	t.rules[chain] = append(t.rules[chain], formatRuleArgs(rulespec))
	return nil
}

func (f *fakeIPTables) Delete(table, chain string, rulespec ...string) error {
	t, err := f.chain("Delete", table, chain)
	if err != nil {
		return err
	}
	i := slices.Index(t.rules[chain], formatRuleArgs(rulespec))
	if i < 0 {
		return fmt.Errorf("fake iptables: Bad rule (does a matching rule exist in that chain?)")
	}
	t.rules[chain] = slices.Delete(t.rules[chain], i, i+1)
	return nil
}

func (f *fakeIPTables) List(table, chain string) ([]string, error) {
	t, err := f.chain("List", table, chain)
	if err != nil {
		return nil, err
	}
	var lines []string
	if slices.Contains(t.builtin, chain) {
		lines = append(lines, "-P "+chain+" ACCEPT")
	} else {
		lines = append(lines, "-N "+chain)
	}
	for _, r := range t.rules[chain] {
		lines = append(lines, "-A "+chain+" "+r)
	}
	return lines, nil
}

// dump is the whole fake state as `iptables-save`-like text, for comparing
// complete states in tests.
func (f *fakeIPTables) dump() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(f.tables)) {
		t := f.tables[name]
		fmt.Fprintf(&b, "*%s\n", name)
		for _, c := range t.builtin {
			fmt.Fprintf(&b, "-P %s ACCEPT\n", c)
		}
		for _, c := range t.user {
			fmt.Fprintf(&b, "-N %s\n", c)
		}
		for _, c := range append(slices.Clone(t.builtin), t.user...) {
			for _, r := range t.rules[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
	}
	return b.String()
}

// mustRun applies iptables-style lines ("-N X", "-A X spec", "-I X spec")
// to table, for setting up a starting state.
func (f *fakeIPTables) mustRun(table string, lines ...string) {
	for _, line := range lines {
		args, err := splitRuleArgs(line)
		if err != nil || len(args) < 2 {
			panic(fmt.Sprintf("bad setup line %q: %v", line, err))
		}
		switch args[0] {
		case "-N":
			err = f.NewChain(table, args[1])
		case "-A":
			err = f.Append(table, args[1], args[2:]...)
		case "-I":
			err = f.Insert(table, args[1], 1, args[2:]...)
		default:
			err = fmt.Errorf("unknown op %q", args[0])
		}
		if err != nil {
			panic(fmt.Sprintf("setup line %q: %v", line, err))
		}
	}
}
