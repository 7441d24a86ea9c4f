package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/clusterlab"
	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// Bounds of what a user sees in a three-server cluster. Measured values
// are logged; the bounds are meshlet's promises with a margin for a
// shared machine. A check change goes through the instance's agent (1 s
// check interval), the servers and the app host's agent to meshlet's
// blocking query.
const (
	checkChangeWithin     = 10 * time.Second // check change → no more traffic
	partitionNoticeWithin = 20 * time.Second // partition → /readyz says fail-static
)

// startCluster builds a three-server Consul cluster for one test and
// removes it when the test ends, whatever happened.
func startCluster(t *testing.T, opts clusterlab.Options) *clusterlab.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := clusterlab.Start(ctx, bins, opts)
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consul servers:\n%s", c.Logs())
		}
		if err := c.Close(); err != nil {
			t.Errorf("removing the cluster: %v", err)
		}
	})
	return c
}

// logOnFailure prints a process's log if the test fails.
func logOnFailure(t *testing.T, p *netlab.Proc) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", p.Name, meshlab.Tail(p.Output()))
		}
	})
}

// addInstances starts n web instances, each on a host with its own agent.
func addInstances(ctx context.Context, t *testing.T, c *clusterlab.Cluster, n int, meta map[string]string) []*clusterlab.Instance {
	t.Helper()
	var out []*clusterlab.Instance
	var ids []string
	for i := 1; i <= n; i++ {
		inst, err := c.AddInstance(ctx, "web", fmt.Sprintf("web-%d", i), meta)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, inst)
		ids = append(ids, inst.Name)
	}
	if err := c.WaitPassing(ctx, "web", 30*time.Second, ids...); err != nil {
		t.Fatal(err)
	}
	return out
}

// appHost starts the app host: its agent, the app (a web instance) and
// meshlet registering it as "app" with the local agent.
func appHost(ctx context.Context, t *testing.T, c *clusterlab.Cluster, env ...string) (*clusterlab.Agent, *netlab.Proc) {
	t.Helper()
	a, err := c.AddAgentHost(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Host.Start("webinstance", nil, c.Bins.WebInstance, "-listen", ":8080", "-name", "app-1"); err != nil {
		t.Fatal(err)
	}
	m, err := a.StartMeshlet(append([]string{"SERVICE_NAME=app", "SERVICE_PORT=8080", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=1s"}, env...))
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, m)
	return a, m
}

// noTrafficTo sends requests until n in a row avoid inst, and returns how
// long that took from since; it fails the test after limit.
func noTrafficTo(ctx context.Context, t *testing.T, c *meshlab.AppClient, inst string, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	clean := 0
	err := meshlab.Poll(ctx, limit, "no more traffic to "+inst, func() error {
		h := c.Get(ctx, "/", "")
		if !h.OK() {
			return meshlab.StopPolling(fmt.Errorf("request failed: %+v", h))
		}
		if h.Instance == inst {
			clean = 0
		} else {
			clean++
		}
		if clean < 6 {
			return fmt.Errorf("%d clean in a row", clean)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(since)
}

// load runs a bounded constant-rate load in the background; wait returns
// its hits.
func bgLoad(ctx context.Context, c *meshlab.AppClient, n int, every time.Duration) (wait func() []meshlab.Hit) {
	var hits []meshlab.Hit
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		hits = c.ConstantRate(ctx, "/", n, every)
	}()
	return func() []meshlab.Hit { wg.Wait(); return hits }
}

// In a cluster of three Consul servers, with a client agent on every host:
// meshlet spreads and keeps stickiness; the raft leader killed under load
// fails no request, and a check change made after the election reaches
// traffic; a 30 s partition of the app host's agent from the servers is
// fail-static (and /readyz says so within seconds), fails no request, and
// an instance turned critical during it leaves traffic promptly after.
func TestClusterLeaderLossAndPartition(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, clusterlab.Options{})
	insts := addInstances(ctx, t, c, 3, map[string]string{"meshlet-sticky": "cookie"})
	app, m := appHost(ctx, t, c)
	if err := app.WaitReady(ctx, m, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	appIDs := waitAppPassing(ctx, t, c)
	t.Logf("cluster, 4 agents, meshlet ready in %v", time.Since(start).Round(time.Millisecond))

	vip, err := app.ResolveVIP("web.local")
	if err != nil {
		t.Fatal(err)
	}
	client := app.AppClient(vip, "web.local")
	counts := meshlab.CountBy(client.ConstantRate(ctx, "/", 30, 10*time.Millisecond))
	for _, inst := range insts {
		if counts[inst.Name] < 5 {
			t.Errorf("spread over the instances: %v, want each of 3 about 10", counts)
		}
	}
	first := client.Get(ctx, "/", "")
	if len(first.SetCookie) == 0 {
		t.Fatalf("no sticky cookie: %+v", first)
	}
	cookie := strings.SplitN(first.SetCookie[0], ";", 2)[0]
	for i := range 10 {
		if h := client.Get(ctx, "/", cookie); h.Instance != first.Instance {
			t.Fatalf("sticky request %d went to %s, want %s", i, h.Instance, first.Instance)
		}
	}

	// Leader loss under load.
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wait := bgLoad(ctx, client, 300, 20*time.Millisecond)
	time.Sleep(time.Second) // let the load run before the kill
	killed := time.Now()
	leader.Proc.Signal(syscall.SIGKILL)
	newLeader, err := c.WaitLeader(ctx, 30*time.Second, leader.Name)
	if err != nil {
		t.Fatal(err)
	}
	elected := time.Since(killed)
	changed := time.Now()
	if err := insts[2].SetHealth(ctx, false); err != nil {
		t.Fatal(err)
	}
	hits := wait()
	if failed := meshlab.Failed(hits); len(failed) > 0 {
		t.Errorf("leader loss: %d of %d requests failed: %v", len(failed), len(hits), meshlab.CountBy(hits))
	}
	took := noTrafficTo(ctx, t, client, insts[2].Name, changed, checkChangeWithin)
	t.Logf("leader %s killed: %s elected after %v; %d requests, %d failed; a check change after the election reached traffic in %v",
		leader.Name, newLeader.Name, elected.Round(time.Millisecond), len(hits), len(meshlab.Failed(hits)), took.Round(time.Millisecond))
	if err := c.WaitPassing(ctx, "app", 10*time.Second, appIDs...); err != nil {
		t.Errorf("the app's registration after the leader loss: %v", err)
	}
	if err := insts[2].SetHealth(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitPassing(ctx, "web", 30*time.Second, "web-1", "web-2", "web-3"); err != nil {
		t.Fatal(err)
	}

	// A partition of the app host's agent from the servers.
	wait = bgLoad(ctx, client, 1000, 40*time.Millisecond) // 40 s
	time.Sleep(time.Second)
	if err := app.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			app.Heal(context.Background())
		}
	}()
	cut := time.Now()
	var readyz string
	if err := meshlab.Poll(ctx, partitionNoticeWithin, "/readyz to say fail-static", func() error {
		code, body, err := app.AdminGet(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(body, "fail-static: consul unreachable") {
			return fmt.Errorf("readyz %d: %s", code, body)
		}
		readyz = strings.TrimSpace(body)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	noticed := time.Since(cut)
	if !strings.Contains(m.Output(), "consul unreachable: fail-static") {
		t.Errorf("no log line about the partition")
	}
	if err := insts[1].SetHealth(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitPassing(ctx, "web", 15*time.Second, "web-1", "web-3"); err != nil {
		t.Fatal(err)
	}
	for time.Since(cut) < 30*time.Second && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond) // the partition lasts 30 s
	}
	if err := app.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	healed = true
	healedAt := time.Now()
	took = noTrafficTo(ctx, t, client, insts[1].Name, healedAt, 30*time.Second)
	hits = wait()
	if failed := meshlab.Failed(hits); len(failed) > 0 {
		t.Errorf("partition: %d of %d requests failed: %v", len(failed), len(hits), meshlab.CountBy(hits))
	}
	after := 0
	for _, h := range hits {
		if h.At.After(healedAt) && h.Instance == insts[1].Name {
			after++
		}
	}
	if err := meshlab.Poll(ctx, 30*time.Second, "/readyz without fail-static", func() error {
		code, body, err := app.AdminGet(ctx, "/readyz")
		if err != nil || code != http.StatusOK || strings.Contains(body, "fail-static") {
			return fmt.Errorf("readyz %d: %s %v", code, body, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	t.Logf("partition: /readyz said %q after %v; %d requests, %d failed; the instance turned critical during it left traffic %v after healing (%d requests reached it after)",
		readyz, noticed.Round(time.Millisecond), len(hits), len(meshlab.Failed(hits)), took.Round(time.Millisecond), after)
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}

// waitAppPassing waits until the app host's meshlet has registered the
// app, passing, through its host's agent, and returns its service IDs.
func waitAppPassing(ctx context.Context, t *testing.T, c *clusterlab.Cluster) []string {
	t.Helper()
	var ids []string
	if err := meshlab.Poll(ctx, 30*time.Second, "the app registered and passing", func() error {
		var err error
		if ids, err = c.Passing(ctx, "app"); err != nil {
			return err
		}
		if len(ids) != 1 {
			return fmt.Errorf("passing: %v", ids)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}
