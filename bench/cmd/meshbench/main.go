// Command meshbench runs meshlet's benchmarks side by side with a direct
// connection, nginx and HAProxy (see BENCHMARKS.md) and prints Markdown
// tables of medians and ratios. It needs root and the tools that
// scripts/deps.sh installs; `make bench` runs it.
//
//	meshbench [-runs 5] [-scenarios s1,s1fast,s2,s3,s3fast,s4,s4fast,s5,s6,profile] [-smoke] [-out DIR]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshlet/meshlet/bench/harness"
)

func main() {
	cfg := harness.Defaults()
	smoke := flag.Bool("smoke", false, "the seconds-long CI run: every scenario once with tiny durations")
	scenarios := flag.String("scenarios", "", "comma-separated subset of s1,s1fast,s2,s3,s3fast,s4,s4fast,s5,s6,s7,profile (default: all)")
	flag.IntVar(&cfg.Runs, "runs", cfg.Runs, "measured runs per scenario, after a discarded warm-up")
	flag.BoolVar(&cfg.NoWarmup, "no-warmup", false, "skip the warm-up round")
	flag.DurationVar(&cfg.S1Duration, "s1-duration", cfg.S1Duration, "length of each wrk run (whole seconds)")
	conns := flag.String("s1-conns", "16,64", "wrk connection counts")
	policies := flag.String("s1-policies", "round-robin,sticky,least-request", "balancing policies")
	flag.DurationVar(&cfg.S2Duration, "s2-duration", cfg.S2Duration, "length of each constant-rate run")
	rates := flag.String("s2-rates", "1000,5000", "constant rates, requests/s")
	flag.Int64Var(&cfg.S3Bytes, "s3-bytes", cfg.S3Bytes, "bytes per bulk transfer")
	flag.DurationVar(&cfg.S4Duration, "s4-duration", cfg.S4Duration, "length of each dnsperf run (whole seconds)")
	flag.Float64Var(&cfg.S4FixedRate, "s4-fixed-rate", cfg.S4FixedRate, "q/s of the fixed-rate forwarding runs (0: none)")
	flag.DurationVar(&cfg.S5Duration, "s5-duration", cfg.S5Duration, "load around each failover event")
	flag.DurationVar(&cfg.S6Duration, "s6-duration", cfg.S6Duration, "load while the footprint is read")
	flag.DurationVar(&cfg.ProfileFor, "profile-for", cfg.ProfileFor, "length of each profile")
	env := flag.String("meshlet-env", "", "comma-separated VAR=value added to meshlet's environment (e.g. GOGC=200)")
	flag.StringVar(&cfg.MeshletBin, "meshlet-bin", "", "measure this meshlet binary instead of one built from the tree (e.g. an earlier commit's, for before/after)")
	flag.StringVar(&cfg.MeshletBefore, "meshlet-before", "", "also measure this earlier meshlet build, as target meshlet-before of S1, S2, S3 and S4, taking turns with the tree's")
	fastConns := flag.String("s1fast-conns", "16", "wrk connection counts of S1's proxy-bound variant (scenario s1fast)")
	flag.BoolVar(&cfg.NoPin, "no-pin", false, "do not pin the load generator and the servers to separate cores")
	flag.StringVar(&cfg.OutDir, "out", "", "directory for binaries, profiles, results.md and results.json (default: a temporary one, removed)")
	flag.Parse()
	if *smoke {
		out := cfg.OutDir
		cfg = harness.Smoke()
		cfg.OutDir = out
	} else {
		var err error
		if cfg.S1Conns, err = ints(*conns); err != nil {
			fail(fmt.Errorf("-s1-conns: %w", err))
		}
		cfg.S1Policies = strings.Split(*policies, ",")
		if cfg.S1FastConns, err = ints(*fastConns); err != nil {
			fail(fmt.Errorf("-s1fast-conns: %w", err))
		}
		if cfg.S2Rates, err = floats(*rates); err != nil {
			fail(fmt.Errorf("-s2-rates: %w", err))
		}
	}
	if *env != "" {
		cfg.MeshletEnv = strings.Split(*env, ",")
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	cfg.Log = os.Stderr
	if cfg.OutDir != "" {
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			fail(err)
		}
	}

	// Ctrl-C stops the run; the lab is removed on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Hour)
	defer cancel()
	rep, err := harness.Run(ctx, cfg)
	if rep != nil {
		rep.Print(os.Stdout)
		if cfg.OutDir != "" {
			save(cfg.OutDir, rep)
		}
	}
	if err != nil {
		fail(err)
	}
}

func save(dir string, rep *harness.Report) {
	f, err := os.Create(filepath.Join(dir, "results.md"))
	if err == nil {
		rep.Print(f)
		f.Close()
	}
	if b, err := json.MarshalIndent(rep, "", "  "); err == nil {
		os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644)
	}
	fmt.Fprintf(os.Stderr, "meshbench: results in %s\n", dir)
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func floats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "meshbench: %v\n", err)
	os.Exit(1)
}
