package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// sidecarRules returns the lines of a sidecar host's nat table that are
// meshlet's.
func sidecarRules(t *testing.T, s *meshlab.Sidecar) []string {
	t.Helper()
	return meshletLines(mustRun(t, s, "iptables-save", "-t", "nat"))
}

// When the app's container stops, the runtime removes its interfaces from
// the namespace the sidecar shares. The sidecar then ends by itself: it
// exits 0 within a few seconds with one line saying why, and takes its
// rules with it. Its registration cannot be removed (Consul is reachable
// only through the removed link, as in Docker), so the TTL turns it
// critical. With --exit-when-app-gone=false a sidecar stays.
func TestSidecarEndsWhenItsAppIsGone(t *testing.T) {
	w := registrationWorld(t)
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=200ms", "SERVICE_CHECK_TIMEOUT=200ms", "SERVICE_CHECK_TTL=2s"}
	gone := addSidecar(t, w, "inst1", env)
	stays := addSidecar(t, w, "inst2", env, "--exit-when-app-gone=false")
	waitStatus(t, w, 20*time.Second, map[string]string{idOf(gone): api.HealthPassing, idOf(stays): api.HealthPassing})
	for _, s := range []*meshlab.Sidecar{gone, stays} {
		if err := s.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(sidecarRules(t, s)) == 0 {
			t.Fatalf("%s: no meshlet rules before the app went", s.Name)
		}
	}

	// What Docker does when the app's container stops: its interface goes.
	removed := time.Now()
	for _, s := range []*meshlab.Sidecar{gone, stays} {
		if _, err := s.Host.Run(context.Background(), "ip", "link", "del", "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	exited, err := gone.Meshlet.Wait(15 * time.Second)
	took := time.Since(removed)
	if !exited {
		t.Fatalf("meshlet still runs %v after its app's interface was removed", took.Round(time.Millisecond))
	}
	if err != nil {
		t.Errorf("meshlet exited with %v after its app went; want status 0", err)
	}
	t.Logf("meshlet exited %v after its app's interface was removed", took.Round(time.Millisecond))
	if took > 8*time.Second {
		t.Errorf("exit took %v; want a few seconds (detection 1-2 s, deregistration bounded by 3 s)", took.Round(time.Millisecond))
	}
	out := gone.Meshlet.Output()
	if n := strings.Count(out, "the app is gone"); n != 1 || !strings.Contains(out, "had=eth0") {
		t.Errorf("want one line saying the app is gone, naming eth0; got %d", n)
	}
	if !strings.Contains(out, "could not deregister the app") {
		t.Error("no line saying the deregistration failed, though Consul was out of reach")
	}
	if left := sidecarRules(t, gone); len(left) > 0 {
		t.Errorf("rules left after the sidecar ended:\n%s", strings.Join(left, "\n"))
	}
	// Consul heard nothing: the TTL turns the instance critical.
	waitStatus(t, w, 15*time.Second, map[string]string{idOf(gone): api.HealthCritical})

	// The sidecar told to stay has had ample time to notice, and stays.
	time.Sleep(time.Until(removed.Add(took + 3*time.Second)))
	if exited, err := stays.Meshlet.Wait(0); exited {
		t.Errorf("the sidecar with --exit-when-app-gone=false exited (%v)", err)
	}
	if strings.Contains(stays.Meshlet.Output(), "the app is gone") {
		t.Error("the sidecar with --exit-when-app-gone=false logged that the app is gone")
	}
}
