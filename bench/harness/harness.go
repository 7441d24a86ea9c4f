// Package harness runs meshlet's benchmarks side by side with a direct
// connection, nginx and HAProxy, on the lab topology the integration tests
// use (network namespaces, a real Consul), and prints tables of medians and
// ratios. See BENCHMARKS.md for the method and the scenarios S1–S6.
//
// Everything it starts lives in the lab's namespaces and is removed when it
// returns; every load it sends is bounded in count and time.
package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Config says what to run and for how long. Zero fields get the defaults
// of the full run (Defaults); Smoke gives the seconds-long CI run.
type Config struct {
	Runs      int      // measured runs of each scenario, targets alternating
	NoWarmup  bool     // skip the discarded warm-up round
	Scenarios []string // "s1", "s1fast", "s2", "s3", "s3fast", "s4", "s4fast", "s5".."s7", "profile"; empty: all

	S1Duration  time.Duration // per wrk run; whole seconds
	S1Conns     []int
	S1Policies  []string // round-robin, sticky, least-request
	S2Duration  time.Duration
	S2Rates     []float64
	S2Conns     int
	S3Bytes     int64
	S4Duration  time.Duration // per dnsperf run; whole seconds
	S4FixedRate float64       // q/s of the fixed-rate forwarding runs; 0: none
	S5Duration  time.Duration // load around each failover event
	S5Rate      float64
	S6Settle    time.Duration // idle time before the idle footprint is read
	S6Duration  time.Duration // load while the loaded footprint is read
	S6Conns     int
	S6Rate      float64
	ProfileFor  time.Duration // CPU profile length

	// MeshletEnv is added to meshlet's environment (GOGC=200, GODEBUG=...),
	// to measure a runtime setting before proposing it.
	MeshletEnv []string
	// MeshletBin, when set, is the meshlet binary measured instead of the
	// one built from the tree (an earlier commit's, for a before/after
	// with everything else the same).
	MeshletBin string
	// MeshletBefore, when set, is an earlier meshlet build measured as one
	// more target ("meshlet-before") of S1, S2, S3 and S4, taking turns with
	// the tree's build in every round (meshlet is restarted to switch).
	MeshletBefore string
	// S1FastConns are the wrk connection counts of S1's proxy-bound
	// variant (scenario s1fast).
	S1FastConns []int

	NoPin  bool   // do not pin with taskset (also off on one core)
	OutDir string // binaries, profiles, results.md; default a temporary directory
	Log    io.Writer
}

// Defaults are the full run of `make bench`.
func Defaults() Config {
	return Config{
		Runs:        5,
		S1Duration:  5 * time.Second,
		S1Conns:     []int{16, 64},
		S1Policies:  []string{policyRoundRobin, policySticky, policyLeast},
		S1FastConns: []int{16},
		S2Duration:  10 * time.Second,
		S2Rates:     []float64{1000, 5000},
		S2Conns:     16,
		S3Bytes:     2 << 30,
		S4Duration:  5 * time.Second,
		S4FixedRate: 5000,
		S5Duration:  6 * time.Second,
		S5Rate:      1000,
		S6Settle:    3 * time.Second,
		S6Duration:  5 * time.Second,
		S6Conns:     100,
		S6Rate:      1000,
		ProfileFor:  5 * time.Second,
	}
}

// Smoke is the CI run: every scenario once, tiny durations, no warm-up.
func Smoke() Config {
	c := Defaults()
	c.Runs = 1
	c.NoWarmup = true
	c.S1Duration = time.Second
	c.S1Conns = []int{16}
	c.S1Policies = []string{policyRoundRobin}
	c.S2Duration = 300 * time.Millisecond
	c.S2Rates = []float64{1000}
	c.S3Bytes = 64 << 20
	c.S4Duration = time.Second
	c.S4FixedRate = 0
	c.S5Duration = 4 * time.Second
	c.S6Settle = 200 * time.Millisecond
	c.S6Duration = 500 * time.Millisecond
	c.ProfileFor = time.Second
	c.Scenarios = []string{"s1", "s1fast", "s2", "s3", "s3fast", "s4", "s4fast", "s6"}
	return c
}

func (c Config) withDefaults() Config {
	d := Defaults()
	if c.Runs <= 0 {
		c.Runs = d.Runs
	}
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&c.S1Duration, d.S1Duration)
	set(&c.S2Duration, d.S2Duration)
	set(&c.S4Duration, d.S4Duration)
	set(&c.S5Duration, d.S5Duration)
	set(&c.S6Settle, d.S6Settle)
	set(&c.S6Duration, d.S6Duration)
	set(&c.ProfileFor, d.ProfileFor)
	if len(c.S1Conns) == 0 {
		c.S1Conns = d.S1Conns
	}
	if len(c.S1FastConns) == 0 {
		c.S1FastConns = d.S1FastConns
	}
	if len(c.S1Policies) == 0 {
		c.S1Policies = d.S1Policies
	}
	if len(c.S2Rates) == 0 {
		c.S2Rates = d.S2Rates
	}
	if c.S2Conns <= 0 {
		c.S2Conns = d.S2Conns
	}
	if c.S3Bytes <= 0 {
		c.S3Bytes = d.S3Bytes
	}
	if c.S5Rate <= 0 {
		c.S5Rate = d.S5Rate
	}
	if c.S6Conns <= 0 {
		c.S6Conns = d.S6Conns
	}
	if c.S6Rate <= 0 {
		c.S6Rate = d.S6Rate
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c
}

func (c Config) wants(s string) bool {
	return len(c.Scenarios) == 0 || slices.Contains(c.Scenarios, s)
}

// rounds is how many rounds a scenario runs: the measured runs and, first,
// a warm-up whose results are dropped.
func (c Config) rounds() int {
	if c.NoWarmup {
		return c.Runs
	}
	return c.Runs + 1
}

// measured reports whether round r counts.
func (c Config) measured(r int) bool { return c.NoWarmup || r > 0 }

// Tools are the programs the harness runs besides its own.
var Tools = []string{"ip", "iptables", "taskset", "wrk", "nginx", "haproxy", "dnsperf", "unbound", "go"}

// Missing returns what keeps the harness from running here: not root, or
// tools not installed (scripts/deps.sh installs them).
func Missing() []string {
	var m []string
	if os.Geteuid() != 0 {
		m = append(m, "root (the lab makes network namespaces and iptables rules)")
	}
	for _, t := range Tools {
		if _, err := exec.LookPath(t); err != nil {
			m = append(m, t)
		}
	}
	return m
}

// Run runs the scenarios cfg asks for and returns the report; Print
// writes it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if m := Missing(); len(m) > 0 {
		return nil, fmt.Errorf("missing: %s (run scripts/deps.sh as root)", strings.Join(m, ", "))
	}
	if cfg.OutDir == "" {
		dir, err := os.MkdirTemp("", "meshlet-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.OutDir = dir
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Log, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	rep := &Report{Config: cfg, Machine: machineInfo(), Started: time.Now()}

	setupCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	l, err := startLab(setupCtx, cfg, logf)
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		l.close()
		rep.Machine.LoadAfter = loadAvg()
		rep.Machine.BusyAfter = otherLoad(time.Second)
	}()
	if l.loadCPU == "" {
		rep.note("not pinned: %d CPU(s) or -no-pin; load generator and servers share cores", runtime.NumCPU())
	}

	steps := []struct {
		name string
		run  func(context.Context, *lab, *Report) error
	}{
		// S6 first: its idle footprint needs a meshlet that has seen no load.
		{"s6", runS6},
		{"s1", runS1},
		{"s1fast", runS1Fast},
		{"s2", runS2},
		{"s3", runS3},
		{"s3fast", runS3Fast},
		{"s4", runS4},
		{"s4fast", runS4Fast},
		{"s5", runS5}, // disruptive: kills and restarts an instance
		{"s7", runS7}, // restarts meshlet with an identity, and back
		{"profile", runProfile},
	}
	sampler := startLoadSampler(l)
	defer func() { rep.Machine.OtherLoad = sampler.report() }()
	for _, s := range steps {
		if !cfg.wants(s.name) {
			continue
		}
		logf("scenario %s", s.name)
		sampler.setScenario(s.name)
		if err := s.run(ctx, l, rep); err != nil {
			return rep, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	rep.Finished = time.Now()
	return rep, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
