package intercept

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// unrelated are rules of others (Docker's embedded DNS, a user's chain) that
// we must never touch.
var unrelated = []string{
	"-N DOCKER_OUTPUT",
	"-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:40000",
	`-A OUTPUT -d 127.0.0.11/32 -m comment --comment "docker dns" -j DOCKER_OUTPUT`,
	"-A OUTPUT -d 10.9.9.9/32 -j RETURN",
}

// installedDump is the complete nat+filter state after a clean Install of
// cfg on top of the unrelated rules.
func installedDump(t *testing.T, cfg Config) string {
	t.Helper()
	f := newFakeIPTables()
	f.mustRun("nat", unrelated...)
	f.mustRun("nat", "-N MESHLET_OUTPUT")
	for _, r := range cfg.Rules() {
		f.mustRun("nat", "-A MESHLET_OUTPUT "+formatRuleArgs(r))
	}
	f.mustRun("nat", "-I OUTPUT -j MESHLET_OUTPUT")
	return f.dump()
}

func newTestManager(t *testing.T, cfg Config, f *fakeIPTables) *Manager {
	t.Helper()
	m, err := NewManager(cfg, f)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	return m
}

func TestInstallTwiceLeavesOneCopy(t *testing.T) {
	cfg := testConfig()
	f := newFakeIPTables()
	f.mustRun("nat", unrelated...)
	m := newTestManager(t, cfg, f)
	for i := range 2 {
		if err := m.Install(); err != nil {
			t.Fatalf("Install #%d: %v", i+1, err)
		}
	}
	if got, want := f.dump(), installedDump(t, cfg); got != want {
		t.Errorf("after two Installs:\n%s\nwant:\n%s", got, want)
	}
	if err := m.Verify(); err != nil {
		t.Errorf("Verify after Install: %v", err)
	}
}

// TestInstallLeavesCorrectRulesAlone checks that a restart over correct
// rules makes no change at all, so the app's traffic is never unredirected.
func TestInstallLeavesCorrectRulesAlone(t *testing.T) {
	f := newFakeIPTables()
	m := newTestManager(t, testConfig(), f)
	if err := m.Install(); err != nil {
		t.Fatal(err)
	}
	f.fail = func(op, table, chain string) error {
		switch op {
		case "List", "ChainExists":
			return nil
		}
		return errors.New("unexpected change " + op)
	}
	if err := m.Install(); err != nil {
		t.Fatalf("second Install changed rules: %v", err)
	}
}

func TestInstallRepairs(t *testing.T) {
	cfg := testConfig()
	tests := []struct {
		name  string
		setup []string // nat lines applied after the unrelated rules
	}{
		{name: "nothing installed"},
		{name: "two jumps", setup: []string{
			"-N MESHLET_OUTPUT",
			"-I OUTPUT -j MESHLET_OUTPUT",
			"-I OUTPUT -j MESHLET_OUTPUT",
		}},
		{name: "jump not first", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A OUTPUT -j MESHLET_OUTPUT",
		}},
		{name: "jump with a match of an old version", setup: []string{
			"-N MESHLET_OUTPUT",
			"-I OUTPUT -p tcp -j MESHLET_OUTPUT",
			"-A OUTPUT -j MESHLET_OUTPUT",
		}},
		{name: "goto instead of jump", setup: []string{
			"-N MESHLET_OUTPUT",
			"-I OUTPUT -g MESHLET_OUTPUT",
		}},
		{name: "chain without jump", setup: []string{"-N MESHLET_OUTPUT"}},
		{name: "stale extra rule in our chain", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN",
			"-A MESHLET_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
			"-A MESHLET_OUTPUT -d 127.66.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
			"-I OUTPUT -j MESHLET_OUTPUT",
		}},
		{name: "rules of another config, duplicated", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m owner --uid-owner 7 -j RETURN",
			"-A MESHLET_OUTPUT -m owner --uid-owner 7 -j RETURN",
			"-A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 9999",
			"-I OUTPUT -j MESHLET_OUTPUT",
		}},
		{name: "half-filled chain of a killed run", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeIPTables()
			f.mustRun("nat", unrelated...)
			f.mustRun("nat", tt.setup...)
			m := newTestManager(t, cfg, f)
			if tt.setup != nil {
				if err := m.Verify(); err == nil {
					t.Fatalf("Verify = nil before the repair")
				}
			}
			if err := m.Install(); err != nil {
				t.Fatalf("Install: %v", err)
			}
			if got, want := f.dump(), installedDump(t, cfg); got != want {
				t.Errorf("after Install:\n%s\nwant:\n%s", got, want)
			}
			if err := m.Verify(); err != nil {
				t.Errorf("Verify after Install: %v", err)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	tests := []struct {
		name  string
		setup []string
	}{
		{name: "nothing installed"},
		{name: "installed", setup: []string{"-N MESHLET_OUTPUT", "-A MESHLET_OUTPUT -j RETURN", "-I OUTPUT -j MESHLET_OUTPUT"}},
		{name: "three jumps", setup: []string{
			"-N MESHLET_OUTPUT",
			"-I OUTPUT -j MESHLET_OUTPUT",
			"-A OUTPUT -j MESHLET_OUTPUT",
			"-A OUTPUT -p udp -j MESHLET_OUTPUT",
		}},
		{name: "chain only", setup: []string{"-N MESHLET_OUTPUT", "-A MESHLET_OUTPUT -j RETURN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := newFakeIPTables()
			before.mustRun("nat", unrelated...)
			before.mustRun("filter", "-A OUTPUT -j ACCEPT")
			f := newFakeIPTables()
			f.mustRun("nat", unrelated...)
			f.mustRun("filter", "-A OUTPUT -j ACCEPT")
			f.mustRun("nat", tt.setup...)
			m := newTestManager(t, testConfig(), f)
			for i := range 2 {
				if err := m.Remove(); err != nil {
					t.Fatalf("Remove #%d: %v", i+1, err)
				}
			}
			if got, want := f.dump(), before.dump(); got != want {
				t.Errorf("after Remove:\n%s\nwant the unrelated rules only:\n%s", got, want)
			}
			if got, err := m.Show(); err != nil || got != "not installed" {
				t.Errorf("Show after Remove = %q, %v; want \"not installed\"", got, err)
			}
		})
	}
}

func TestVerifyReportsDifferences(t *testing.T) {
	tests := []struct {
		name  string
		setup []string
		want  []string
	}{
		{name: "nothing", want: []string{"chain nat/MESHLET_OUTPUT does not exist", "no jump from nat/OUTPUT to MESHLET_OUTPUT"}},
		{name: "wrong port", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN",
			"-A MESHLET_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 9",
			"-I OUTPUT -j MESHLET_OUTPUT",
		}, want: []string{`rule 4 is "-d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 9", want "-d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001"`}},
		{name: "missing and jump moved", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN",
			"-A OUTPUT -j MESHLET_OUTPUT",
		}, want: []string{
			`rule 2 is missing, want "-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"`,
			`rule 3 is missing, want "-p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053"`,
			`rule 4 is missing, want "-d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001"`,
			"the jump to MESHLET_OUTPUT is rule 3 of nat/OUTPUT, want rule 1",
		}},
		{name: "extra rule and two jumps", setup: []string{
			"-N MESHLET_OUTPUT",
			"-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN",
			"-A MESHLET_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
			"-A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
			`-A MESHLET_OUTPUT -m comment --comment "left over" -j RETURN`,
			"-I OUTPUT -j MESHLET_OUTPUT",
			"-I OUTPUT -j MESHLET_OUTPUT",
		}, want: []string{
			`rule 5 "-m comment --comment \"left over\" -j RETURN" is not ours`,
			"2 jumps from nat/OUTPUT to MESHLET_OUTPUT, want 1",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeIPTables()
			f.mustRun("nat", unrelated...)
			f.mustRun("nat", tt.setup...)
			m := newTestManager(t, testConfig(), f)
			err := m.Verify()
			var drift *DriftError
			if !errors.As(err, &drift) {
				t.Fatalf("Verify() = %v, want a *DriftError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Verify() = %q\nwant it to contain %q", err, w)
				}
			}
			if len(drift.Problems) != len(tt.want) {
				t.Errorf("Verify() problems = %q, want %d of them", drift.Problems, len(tt.want))
			}
		})
	}
}

func TestShow(t *testing.T) {
	f := newFakeIPTables()
	f.mustRun("nat", unrelated...)
	m := newTestManager(t, testConfig(), f)
	if got, err := m.Show(); err != nil || got != "not installed" {
		t.Fatalf("Show before Install = %q, %v; want \"not installed\"", got, err)
	}
	if err := m.Install(); err != nil {
		t.Fatal(err)
	}
	got, err := m.Show()
	if err != nil {
		t.Fatal(err)
	}
	want := `nat/OUTPUT:
  rule 1: -A OUTPUT -j MESHLET_OUTPUT
nat/MESHLET_OUTPUT:
  rule 1: -A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN
  rule 2: -A MESHLET_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053
  rule 3: -A MESHLET_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053
  rule 4: -A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001
matches the config
`
	if got != want {
		t.Errorf("Show() =\n%s\nwant\n%s", got, want)
	}
	f.mustRun("nat", "-A OUTPUT -j MESHLET_OUTPUT")
	got, err = m.Show()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"rule 4: -A OUTPUT -j MESHLET_OUTPUT", "differs from the config:\n  2 jumps"} {
		if !strings.Contains(got, w) {
			t.Errorf("Show() with two jumps =\n%s\nwant it to contain %q", got, w)
		}
	}
}

// TestErrorsNameIPTablesAndChain checks that a failing iptables command
// (no permission, no nat table) surfaces with what was being done.
func TestErrorsNameIPTablesAndChain(t *testing.T) {
	denied := errors.New("running [/usr/sbin/iptables -t nat -S OUTPUT --wait]: exit status 4: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)")
	tests := []struct {
		name   string
		failOp string
		call   func(*Manager) error
		want   []string
	}{
		{name: "install, cannot list", failOp: "List", call: (*Manager).Install,
			want: []string{"installing iptables rules in nat/MESHLET_OUTPUT: listing chain nat/OUTPUT", "Permission denied"}},
		{name: "install, cannot create chain", failOp: "ClearChain", call: (*Manager).Install,
			want: []string{"installing iptables rules in nat/MESHLET_OUTPUT: creating or flushing chain", "Permission denied"}},
		{name: "install, cannot append", failOp: "Append", call: (*Manager).Install,
			want: []string{"installing iptables rules in nat/MESHLET_OUTPUT: appending rule \"-m mark --mark 0x1e -j RETURN\"", "Permission denied"}},
		{name: "install, cannot insert jump", failOp: "Insert", call: (*Manager).Install,
			want: []string{"installing iptables rules in nat/MESHLET_OUTPUT: inserting jump \"-j MESHLET_OUTPUT\" at the top of nat/OUTPUT", "Permission denied"}},
		{name: "remove, cannot check chain", failOp: "ChainExists", call: (*Manager).Remove,
			want: []string{"removing iptables rules from nat/MESHLET_OUTPUT: checking for chain nat/MESHLET_OUTPUT", "Permission denied"}},
		{name: "verify, cannot list", failOp: "List", call: (*Manager).Verify,
			want: []string{"verifying iptables rules in nat/MESHLET_OUTPUT: listing chain nat/OUTPUT", "Permission denied"}},
		{name: "show, cannot list", failOp: "List", call: func(m *Manager) error { _, err := m.Show(); return err },
			want: []string{"showing iptables rules in nat/MESHLET_OUTPUT: listing chain nat/OUTPUT", "Permission denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeIPTables()
			f.fail = func(op, table, chain string) error {
				if op == tt.failOp {
					return denied
				}
				return nil
			}
			err := tt.call(newTestManager(t, testConfig(), f))
			if !errors.Is(err, denied) {
				t.Fatalf("error = %v, want it to wrap the iptables error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestRemoveRefusesChainUsedElsewhere(t *testing.T) {
	f := newFakeIPTables()
	f.mustRun("nat", "-N MESHLET_OUTPUT", "-I OUTPUT -j MESHLET_OUTPUT", "-A PREROUTING -j MESHLET_OUTPUT")
	err := newTestManager(t, testConfig(), f).Remove()
	if err == nil || !strings.Contains(err.Error(), "deleting chain") {
		t.Fatalf("Remove() = %v, want an error about deleting the chain", err)
	}
	if !strings.Contains(f.dump(), "-A PREROUTING -j MESHLET_OUTPUT") {
		t.Errorf("Remove touched a rule outside OUTPUT:\n%s", f.dump())
	}
}

func TestInstallLogsRepairsOnly(t *testing.T) {
	var logs strings.Builder
	f := newFakeIPTables()
	m, err := NewManager(testConfig(), f, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Install(); err != nil {
		t.Fatal(err)
	}
	if logs.Len() != 0 {
		t.Errorf("a fresh Install logged %q, want nothing", logs.String())
	}
	f.mustRun("nat", "-A OUTPUT -j MESHLET_OUTPUT")
	if err := m.Install(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "repairing iptables rules") || !strings.Contains(logs.String(), "2 jumps from nat/OUTPUT") {
		t.Errorf("repair logged %q, want the problems it repaired", logs.String())
	}
}
