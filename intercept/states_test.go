package intercept

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// TestStatesReplay is Tailscale's TestRouterStates idea: a table of steps and
// the complete iptables state each must leave, replayed in many random
// orders so that every transition (install over another config, remove over
// damage, install over a half-removed state...) is shown to be clean.
func TestStatesReplay(t *testing.T) {
	uidCfg := testConfig()
	uidCfg.Mark, uidCfg.ExcludeUID = 0, 1337
	bothCfg := testConfig()
	bothCfg.ExcludeUID, bothCfg.DNSPort, bothCfg.OutboundPort = 0, 5353, 9001
	bothCfg.VIPCIDR = netip.MustParsePrefix("127.78.0.0/16")

	// others are the rules of others in the namespace: the unrelated ones
	// of every test plus those a step added while we were running. Every
	// expected state starts from them.
	others := func(added int) *fakeIPTables {
		f := newFakeIPTables()
		f.mustRun("nat", unrelated...)
		for range added {
			f.mustRun("nat", "-A POSTROUTING -j MASQUERADE")
		}
		return f
	}
	installed := func(cfg Config) func(added int) string {
		return func(added int) string {
			f := others(added)
			f.mustRun("nat", "-N MESHLET_OUTPUT")
			for _, r := range cfg.Rules() {
				f.mustRun("nat", "-A MESHLET_OUTPUT "+formatRuleArgs(r))
			}
			f.mustRun("nat", "-I OUTPUT -j MESHLET_OUTPUT")
			return f.dump()
		}
	}

	type step struct {
		name string
		do   func(t *testing.T, f *fakeIPTables) error
		// want is the complete state the step must leave, given how many
		// rules of others were added; nil for damage steps, whose result
		// depends on what was there before.
		want func(added int) string
		// addsOther says the step adds one rule of others.
		addsOther bool
	}
	install := func(cfg Config) func(*testing.T, *fakeIPTables) error {
		return func(t *testing.T, f *fakeIPTables) error { return newTestManager(t, cfg, f).Install() }
	}
	// damage applies lines as a killed run or a meddling admin would, as far
	// as the state allows (no damage inside a chain that does not exist).
	damage := func(lines ...string) func(*testing.T, *fakeIPTables) error {
		return func(t *testing.T, f *fakeIPTables) error {
			if ok, _ := f.ChainExists("nat", ChainName); !ok {
				return nil
			}
			f.mustRun("nat", lines...)
			return nil
		}
	}
	steps := []step{
		{name: "install mark", do: install(testConfig()), want: installed(testConfig())},
		{name: "install uid", do: install(uidCfg), want: installed(uidCfg)},
		{name: "install both", do: install(bothCfg), want: installed(bothCfg)},
		{name: "remove", do: func(t *testing.T, f *fakeIPTables) error {
			return newTestManager(t, testConfig(), f).Remove()
		}, want: func(added int) string { return others(added).dump() }},
		{name: "damage: extra jump", do: damage("-A OUTPUT -j MESHLET_OUTPUT")},
		{name: "damage: stale rule", do: damage("-A MESHLET_OUTPUT -p tcp -j RETURN")},
		{name: "damage: jump lost", do: func(t *testing.T, f *fakeIPTables) error {
			_ = f.Delete("nat", "OUTPUT", jumpRule()...) // absent is fine: nothing to lose
			return nil
		}},
		{name: "damage: chain of a killed run", do: func(t *testing.T, f *fakeIPTables) error {
			if ok, _ := f.ChainExists("nat", ChainName); !ok {
				f.mustRun("nat", "-N MESHLET_OUTPUT", "-A MESHLET_OUTPUT -m mark --mark 0x1e -j RETURN")
			}
			return nil
		}},
		{name: "other: rule added", addsOther: true, do: func(t *testing.T, f *fakeIPTables) error {
			f.mustRun("nat", "-A POSTROUTING -j MASQUERADE")
			return nil
		}},
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for round := range 300 {
		f := others(0)
		added := 0
		var path []string
		for range 8 {
			s := steps[rng.IntN(len(steps))]
			path = append(path, s.name)
			if err := s.do(t, f); err != nil {
				t.Fatalf("round %d, steps %q: %v", round, path, err)
			}
			if s.addsOther {
				added++
			}
			if s.want == nil {
				continue
			}
			if got, want := f.dump(), s.want(added); got != want {
				t.Fatalf("round %d, steps %q left:\n%s\nwant:\n%s", round, path, got, want)
			}
		}
	}
}
