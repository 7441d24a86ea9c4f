// Command demo builds meshlet's standard topology on this machine (network
// namespaces, a real Consul, three instances of "web", an app host with
// meshlet) and shows where the unchanged app's `curl http://web.local/`
// requests go. It removes everything it made when it ends: after -duration,
// or on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "stop after this long (the demo is bounded)")
	every := flag.Duration("every", 2*time.Second, "time between rounds")
	perRound := flag.Int("requests", 12, "requests per round")
	flag.Parse()
	if err := run(*duration, *every, *perRound); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run(duration, every time.Duration, perRound int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run me as root: I make network namespaces and iptables rules inside them")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()

	netlab.Sweep()
	dir, err := os.MkdirTemp("", "meshlet-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	say("building meshlet and the demo web service (Consul comes from scripts/consul.sh)")
	bins, err := meshlab.Build(ctx, dir)
	if err != nil {
		return err
	}
	say("making the lab: a Consul host, web-1..3, a DNS host and an app host running meshlet")
	w, err := meshlab.Start(ctx, bins, meshlab.Options{})
	if err != nil {
		return err
	}
	defer func() {
		say("cleaning up: stopping processes, deleting namespaces")
		w.Close()
	}()
	for _, h := range w.Lab.Hosts() {
		fmt.Printf("    %-8s %-15s (namespace %s)\n", h.Name, h.IP, h.NS)
	}

	out, err := w.App.Run(ctx, "getent", "ahostsv4", "web.local")
	if err != nil {
		return err
	}
	say("in the app's namespace, getent ahostsv4 web.local → %s", strings.Fields(out)[0])
	say("sending %d × `curl http://web.local/` from the app every %s (Ctrl-C to stop)", perRound, every)

	client := w.ConsulHost.HTTPClient(5 * time.Second)
	setHealth := func(inst *meshlab.Instance, state string) {
		resp, err := client.Post(inst.URL("/admin/health?state="+state), "text/plain", nil)
		if err == nil {
			resp.Body.Close()
		}
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for round := 1; ; round++ {
		switch round {
		case 4:
			say("web-2's health probe now fails: Consul turns its check critical, meshlet stops sending to it")
			setHealth(w.Instances[1], "fail")
		case 8:
			say("web-2 is healthy again")
			setHealth(w.Instances[1], "ok")
		}
		counts := map[string]int{}
		for i := 0; i < perRound; i++ {
			out, err := w.Curl(ctx, "http://web.local/")
			if err != nil {
				counts["failed"]++
				continue
			}
			counts[strings.TrimSpace(out)]++
		}
		fmt.Printf("round %3d: %s\n", round, tally(counts))
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func tally(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s ×%-3d ", k, m[k])
	}
	return b.String()
}

func say(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}
