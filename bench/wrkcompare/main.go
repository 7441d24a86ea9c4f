// Command wrkcompare measures HTTP throughput through meshlet against a direct
// connection to one instance, in one run on the standard lab topology: wrk
// runs in the app's namespace, once against http://web.local/ (DNS, iptables
// redirect, meshlet, round-robin over the instances) and once against one
// instance's address. Runs alternate and each is bounded by -duration.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

func main() {
	duration := flag.Duration("duration", 10*time.Second, "length of each wrk run")
	conns := flag.Int("c", 16, "wrk connections")
	runs := flag.Int("runs", 5, "runs of each target (alternating); the median is reported")
	instances := flag.Int("instances", 3, "instances behind web.local")
	flag.Parse()
	if err := run(*duration, *conns, *runs, *instances); err != nil {
		fmt.Fprintf(os.Stderr, "wrkcompare: %v\n", err)
		os.Exit(1)
	}
}

var rpsLine = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func run(duration time.Duration, conns, runs, instances int) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk is not installed (apt-get install wrk)")
	}
	ctx := context.Background()
	netlab.Sweep()
	dir, err := os.MkdirTemp("", "meshlet-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := meshlab.Build(ctx, dir)
	if err != nil {
		return err
	}
	w, err := meshlab.Start(ctx, bins, meshlab.Options{Instances: instances, Meshlet: []string{"--log-level", "warn"}})
	if err != nil {
		return err
	}
	defer w.Close()

	targets := []struct{ name, url string }{
		{"meshlet (web.local, round-robin)", "http://web.local/"},
		{"direct (one instance)", w.Instances[0].URL("/")},
	}
	results := make([][]float64, len(targets))
	for r := 0; r < runs+1; r++ { // the first round warms up and is discarded
		for i, tg := range targets {
			out, err := w.App.Run(ctx, "wrk", "-t1", "-c"+strconv.Itoa(conns), "-d"+duration.String(), tg.url)
			if err != nil {
				return err
			}
			m := rpsLine.FindStringSubmatch(out)
			if m == nil {
				return fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
			}
			rps, _ := strconv.ParseFloat(m[1], 64)
			if r > 0 {
				results[i] = append(results[i], rps)
			}
			fmt.Printf("run %d %-34s %10.0f req/s\n", r, tg.name, rps)
		}
	}
	fmt.Printf("\nmedian of %d runs, wrk -t1 -c%d -d%s:\n", runs, conns, duration)
	base := median(results[1])
	for i, tg := range targets {
		m := median(results[i])
		fmt.Printf("  %-34s %10.0f req/s  (%.2f× direct)\n", tg.name, m, m/base)
	}
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
