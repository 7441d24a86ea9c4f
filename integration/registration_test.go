package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// These tests run instance hosts the way a compose file runs them: the app
// and a meshlet sidecar in its namespace with SERVICE_* variables, and no
// one else registering anything. The world's own app host is the caller;
// its manually registered "seed" service only gives the world something
// to start with.

// registrationWorld starts a world whose only registered service is "seed".
func registrationWorld(t *testing.T) *meshlab.World {
	return startWorld(t, meshlab.Options{Service: "seed", Instances: 1})
}

// addSidecar starts an instance host with its sidecar, and shows the
// sidecar's log if the test fails.
func addSidecar(t *testing.T, w *meshlab.World, name string, env []string, args ...string) *meshlab.Sidecar {
	t.Helper()
	s, err := w.AddSidecarHost(name, env, args...)
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's meshlet log (last lines):\n%s", name, lastLines(s.Meshlet.Output(), 40))
		}
	})
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// idOf is the default service ID of a sidecar host's app on port 8080.
func idOf(s *meshlab.Sidecar) string { return s.Name + "-web-8080" }

func waitStatus(t *testing.T, w *meshlab.World, limit time.Duration, want map[string]string) map[string]meshlab.Registration {
	t.Helper()
	regs, err := w.WaitRegistration(context.Background(), "web", limit, fmt.Sprintf("web instances %v", want), func(regs map[string]meshlab.Registration) error {
		for id, st := range want {
			r, ok := regs[id]
			switch {
			case st == "gone" && ok:
				return fmt.Errorf("%s still registered (%s)", id, r.Status)
			case st == "gone":
			case !ok:
				return fmt.Errorf("%s not registered", id)
			case r.Status != st:
				return fmt.Errorf("%s is %s: %s", id, r.Status, r.Output)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return regs
}

// An app whose only registration is its sidecar's appears in Consul with
// its namespace's address, tags and meta, critical during the initial
// delay and passing after it; callers reach it by name; `meshlet health`
// and `meshlet wait` answer for the sidecar.
func TestAppRegistersItselfThroughItsSidecar(t *testing.T) {
	w := registrationWorld(t)
	ctx := context.Background()
	const delay = 2 * time.Second
	start := time.Now()
	s := addSidecar(t, w, "inst1", []string{"SERVICE_NAME=web", "SERVICE_TAGS=blue,v2", "SERVICE_VERSION=2.1",
		"SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=500ms", "SERVICE_CHECK_INITIAL_DELAY=" + delay.String()})

	var firstSeen time.Time
	regs, err := w.WaitRegistration(ctx, "web", 15*time.Second, "inst1's registration", func(regs map[string]meshlab.Registration) error {
		if len(regs) == 0 {
			return errors.New("not yet")
		}
		firstSeen = time.Now()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := regs[idOf(s)]
	if !ok || len(regs) != 1 {
		t.Fatalf("registrations %+v; want only %s", regs, idOf(s))
	}
	if r.Address != s.Host.IP.String() || r.Port != 8080 || !slices.Equal(r.Tags, []string{"blue", "v2"}) || r.Meta["version"] != "2.1" {
		t.Errorf("registered %+v; want %s:8080, tags [blue v2], meta version=2.1", r, s.Host.IP)
	}
	if firstSeen.Sub(start) < delay && r.Status != api.HealthCritical {
		t.Errorf("%v after start, within the initial delay, the check is %s (%s); want critical", firstSeen.Sub(start), r.Status, r.Output)
	}
	waitStatus(t, w, 15*time.Second, map[string]string{idOf(s): api.HealthPassing})
	passing := time.Since(start)
	t.Logf("registered %v after the sidecar started, passing after %v (initial delay %v)", firstSeen.Sub(start).Round(time.Millisecond), passing.Round(time.Millisecond), delay)
	if passing < delay {
		t.Errorf("passing after %v, before the initial delay of %v", passing, delay)
	}

	// Callers reach it by name.
	var out string
	for i := 0; i < 50; i++ {
		if out, err = w.Curl(ctx, "http://web.local/"); err == nil && strings.TrimSpace(out) == "inst1" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.TrimSpace(out) != "inst1" {
		t.Errorf("caller's curl http://web.local/: %q, %v; want inst1", out, err)
	}

	// The sidecar's own commands, as a compose healthcheck and an app's
	// entrypoint would run them.
	if out, err := s.Host.Run(ctx, bins.Meshlet, "health"); err != nil || strings.TrimSpace(out) != "ready" {
		t.Errorf("meshlet health: %q, %v", out, err)
	}
	if out, err := s.Host.Run(ctx, bins.Meshlet, "wait", "--timeout", "5s"); err != nil {
		t.Errorf("meshlet wait: %q, %v", out, err)
	}
	bare, err := w.Lab.AddHost("bare")
	if err != nil {
		t.Fatal(err)
	}
	out, err = bare.Run(ctx, bins.Meshlet, "health")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "cannot reach the sidecar's admin server") {
		t.Errorf("meshlet health without a sidecar: %q, %v; want exit 1 with the reason", out, err)
	}
	code, body, err := s.AdminGet(ctx, "/v1/state")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `"id": "inst1-web-8080"`) || !strings.Contains(body, `"registered": true`) {
		t.Errorf("/v1/state: %d %v\n%s", code, err, body)
	}
}

// An app that stops answering its probe turns critical within interval ×
// failure threshold, and callers stop sending to it.
func TestFailingProbeTakesAppOutOfRotation(t *testing.T) {
	w := registrationWorld(t)
	const interval, threshold = 300 * time.Millisecond, 3
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=" + interval.String(),
		"SERVICE_CHECK_TIMEOUT=300ms", fmt.Sprintf("SERVICE_CHECK_FAILURE_THRESHOLD=%d", threshold)}
	a := addSidecar(t, w, "inst1", env)
	b := addSidecar(t, w, "inst2", env)
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(a): api.HealthPassing, idOf(b): api.HealthPassing})
	vip := resolveVIP(t, w, "web.local")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hitsc := make(chan []hit, 1)
	go func() { hitsc <- load(ctx, w, vip, 600, 10*time.Millisecond) }() // 100 requests/s for 6 s
	time.Sleep(1500 * time.Millisecond)

	failed := time.Now()
	if err := b.SetAppHealth(ctx, false); err != nil {
		t.Fatal(err)
	}
	var critical time.Time
	for critical.IsZero() && ctx.Err() == nil {
		regs, err := w.Registrations(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		if regs[idOf(b)].Status == api.HealthCritical {
			critical = time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	hits := <-hitsc
	var last time.Time
	for _, h := range hits {
		if h.instance == b.Name {
			last = h.at
		}
	}
	bound := interval * threshold
	t.Logf("%s's probe failing: Consul showed critical after %v, its last request came %v after the failure (interval × threshold = %v); requests: %v",
		b.Name, critical.Sub(failed).Round(time.Millisecond), last.Sub(failed).Round(time.Millisecond), bound, countBy(hits))
	if critical.IsZero() || critical.Sub(failed) > bound+500*time.Millisecond {
		t.Errorf("critical after %v; want within %v (+ the probe's own time)", critical.Sub(failed), bound)
	}
	if last.Sub(failed) > bound+time.Second {
		t.Errorf("%s still got traffic %v after its app failed", b.Name, last.Sub(failed))
	}
	if c := countBy(hits); c["error"] > 0 || c[a.Name] == 0 || c[b.Name] == 0 || len(c) != 2 {
		t.Errorf("requests: %v; want no failures and both instances served", c)
	}
}

// SIGTERM on an instance's sidecar under load: its check turns critical,
// callers move off it while the app still serves and its outbound traffic
// still works, then it is deregistered and meshlet exits 0; then the app
// goes too, as compose stops it after its sidecar. No request fails.
func TestGracefulStopUnderLoad(t *testing.T) {
	w := registrationWorld(t)
	const drain = 2 * time.Second
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=500ms"}
	a := addSidecar(t, w, "inst1", env)
	b := addSidecar(t, w, "inst2", env, "--drain-period", drain.String())
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(a): api.HealthPassing, idOf(b): api.HealthPassing})
	vip := resolveVIP(t, w, "web.local")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hitsc := make(chan []hit, 1)
	go func() { hitsc <- load(ctx, w, vip, 700, 10*time.Millisecond) }() // 100 requests/s for 7 s
	time.Sleep(1500 * time.Millisecond)

	sigterm := time.Now()
	if err := b.Meshlet.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// During the drain the app still has its mesh: its own request reaches
	// the other instance, and Consul still lists it, critical.
	time.Sleep(drain / 4)
	if out, err := b.Host.Run(ctx, "curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://web.local/"); err != nil || strings.TrimSpace(out) != a.Name {
		t.Errorf("the stopping instance's own request during the drain: %q, %v; want %s", out, err, a.Name)
	}
	if regs, err := w.Registrations(ctx, "web"); err != nil || regs[idOf(b)].Status != api.HealthCritical {
		t.Errorf("during the drain: %+v, %v; want %s registered and critical", regs[idOf(b)], err, idOf(b))
	}

	exited, err := b.Meshlet.Wait(drain + 15*time.Second)
	stopped := time.Now()
	if !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v", exited, err)
	}
	if regs, err := w.Registrations(ctx, "web"); err != nil || len(regs) != 1 {
		t.Errorf("after the sidecar exited: %v, %v; want only %s", regs, err, idOf(a))
	}
	if left := meshletLines(mustRun(t, b, "iptables-save", "-t", "nat")); len(left) > 0 {
		t.Errorf("rules left in %s:\n%s", b.Name, strings.Join(left, "\n"))
	}
	b.App.Kill()

	hits := <-hitsc
	var last time.Time
	for _, h := range hits {
		if h.instance == b.Name {
			last = h.at
		}
	}
	c := countBy(hits)
	failed := len(hits) - c[a.Name] - c[b.Name]
	t.Logf("graceful stop of %s under 100 requests/s: %d of %d requests failed; its last request came %v after SIGTERM; meshlet exited %v after SIGTERM (drain period %v); %v",
		b.Name, failed, len(hits), last.Sub(sigterm).Round(time.Millisecond), stopped.Sub(sigterm).Round(time.Millisecond), drain, c)
	if failed > 0 {
		t.Errorf("%d requests failed: %v", failed, c)
	}
	if c[b.Name] == 0 || last.Sub(sigterm) > time.Second {
		t.Errorf("%s got %d requests, the last %v after SIGTERM; want some before and none from 1 s after", b.Name, c[b.Name], last.Sub(sigterm))
	}
	if stopped.Sub(sigterm) < drain {
		t.Errorf("meshlet exited %v after SIGTERM, before its drain period of %v", stopped.Sub(sigterm), drain)
	}
}

func mustRun(t *testing.T, s *meshlab.Sidecar, name string, args ...string) string {
	t.Helper()
	out, err := s.Host.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A second signal cuts a long drain period short, and the app is still
// deregistered.
func TestSecondSignalSkipsTheDrain(t *testing.T) {
	w := registrationWorld(t)
	s := addSidecar(t, w, "inst1", []string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=500ms"}, "--drain-period", "60s")
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(s): api.HealthPassing})
	start := time.Now()
	s.Meshlet.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	if exited, _ := s.Meshlet.Wait(0); exited {
		t.Fatal("meshlet exited before its drain period")
	}
	s.Meshlet.Signal(syscall.SIGINT)
	exited, err := s.Meshlet.Wait(10 * time.Second)
	if !exited || err != nil {
		t.Fatalf("after the second signal: exited=%v err=%v", exited, err)
	}
	t.Logf("exited %v after SIGTERM with a 60 s drain period, SIGINT 500 ms after it", time.Since(start).Round(time.Millisecond))
	if regs, err := w.Registrations(context.Background(), "web"); err != nil || len(regs) != 0 {
		t.Errorf("after exit: %v, %v; want no registration", regs, err)
	}
}

// A sidecar killed outright leaves its registration behind; the TTL turns
// it critical, and Consul's reaper removes it after DeregisterAfter (at
// least a minute: Consul's floor) plus up to its 30 s reaping interval.
func TestKilledSidecarIsReaped(t *testing.T) {
	w := registrationWorld(t)
	s := addSidecar(t, w, "inst1", []string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=200ms", "SERVICE_CHECK_TIMEOUT=200ms",
		"SERVICE_CHECK_TTL=2s", "SERVICE_CHECK_DEREGISTER_AFTER=1m"})
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(s): api.HealthPassing})
	killed := time.Now()
	s.Meshlet.Kill()
	waitStatus(t, w, 10*time.Second, map[string]string{idOf(s): api.HealthCritical})
	critical := time.Since(killed)
	waitStatus(t, w, 150*time.Second, map[string]string{idOf(s): "gone"})
	t.Logf("after SIGKILL: critical after %v (TTL 2s), deregistered after %v (DeregisterAfter 1m + Consul's reaping)",
		critical.Round(time.Millisecond), time.Since(killed).Round(time.Second))
}

// Two replicas with the same SERVICE_NAME and no SERVICE_ID get distinct
// IDs (from their hostnames) and share the traffic.
func TestReplicasGetDistinctIDs(t *testing.T) {
	w := registrationWorld(t)
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=500ms"}
	a := addSidecar(t, w, "replica1", env)
	b := addSidecar(t, w, "replica2", env)
	regs := waitStatus(t, w, 20*time.Second, map[string]string{idOf(a): api.HealthPassing, idOf(b): api.HealthPassing})
	if len(regs) != 2 || regs[idOf(a)].Address == regs[idOf(b)].Address {
		t.Errorf("registrations %+v; want two, at different addresses", regs)
	}
	vip := resolveVIP(t, w, "web.local")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := countBy(load(ctx, w, vip, 40, 20*time.Millisecond))
	t.Logf("40 requests: %v", c)
	if c[a.Name] < 10 || c[b.Name] < 10 {
		t.Errorf("requests %v; want both replicas to get their share", c)
	}
}

// Bad registration values stop meshlet at start with one line naming the
// variable, a non-zero exit, no rule and no registration left behind.
func TestBadRegistrationSettingsAreRefused(t *testing.T) {
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1, NoMeshlet: true})
	ctx := context.Background()
	host, err := w.Lab.AddHost("bad")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=soon"}, "SERVICE_CHECK_INTERVAL"},
		{[]string{"SERVICE_NAME=web", `MESHLET_ADVERTISE_ADDR={{ GetInterfaceIP "nosuch0" }}`}, "MESHLET_ADVERTISE_ADDR"},
		{[]string{"SERVICE_NAME=web", "SERVICE_PORT=http"}, "SERVICE_PORT"},
		{[]string{"SERVICE_NAME=web", "SERVICE_99999_TAGS=b"}, "SERVICE_99999_TAGS"},
		{[]string{"SERVICE_NAME=web_app"}, "SERVICE_NAME"},
	}
	for _, tt := range tests {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		cmd := host.Command(cctx, bins.Meshlet, "run", "--consul", w.ConsulAddr(), "--resolv-conf", w.AppResolv)
		cmd.Env = append(os.Environ(), tt.env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		msg := strings.TrimSpace(stderr.String())
		if exitCode(err) <= 0 {
			t.Errorf("%v: exit %v, want non-zero", tt.env, err)
		}
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "meshlet: "+tt.want+": ") {
			t.Errorf("%v: stderr %q; want one line starting with %q", tt.env, msg, "meshlet: "+tt.want+": ")
		}
		t.Logf("%v → %s", tt.env, msg)
		out, err := host.Run(ctx, "iptables-save", "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		if left := meshletLines(out); len(left) > 0 {
			t.Errorf("%v: rules left behind:\n%s", tt.env, strings.Join(left, "\n"))
		}
	}
	if regs, err := w.Registrations(ctx, "web"); err != nil || len(regs) > 0 {
		t.Errorf("registrations %v, %v; want none", regs, err)
	}
}

// A sidecar that starts while Consul is down serves its app at once and
// registers once Consul is back; one registered before the outage
// registers again in the Consul that came back empty.
func TestRegistrationOutlivesConsulOutage(t *testing.T) {
	w := registrationWorld(t)
	ctx := context.Background()
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=500ms"}
	a := addSidecar(t, w, "inst1", env)
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(a): api.HealthPassing})

	w.StopConsul()
	b := addSidecar(t, w, "inst2", env)
	// b serves its app without Consul: alive, and names outside the mesh
	// resolve through it.
	var code int
	var err error
	for i := 0; i < 50; i++ {
		if code, _, err = b.AdminGet(ctx, "/healthz"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || code != http.StatusOK {
		t.Fatalf("%s's /healthz with Consul down: %d %v", b.Name, code, err)
	}
	if out, err := b.Host.Run(ctx, "getent", "ahostsv4", "outside.example"); err != nil || !strings.Contains(out, meshlab.OutsideAddr.String()) {
		t.Errorf("%s resolving outside.example with Consul down: %q, %v", b.Name, out, err)
	}
	time.Sleep(2 * time.Second) // a few failed attempts, so backoff is in play

	if err := w.StartConsul(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitStatus(t, w, 30*time.Second, map[string]string{idOf(a): api.HealthPassing, idOf(b): api.HealthPassing})
	t.Logf("both registered and passing %v after Consul came back (empty)", time.Since(back).Round(time.Millisecond))

	// The caller finds both again.
	seen := map[string]bool{}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		if out, err := w.Curl(ctx, "http://web.local/"); err == nil {
			seen[strings.TrimSpace(out)] = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !seen[a.Name] || !seen[b.Name] {
		t.Errorf("the caller reached %v after the outage; want both", seen)
	}
}
