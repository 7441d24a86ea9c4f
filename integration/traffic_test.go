package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
)

var stickyMeta = map[string]string{"meshlet-sticky": "cookie", "meshlet-sticky-cookie": "CONTAINERID"}

// waitFor polls cond every 100 ms for at most limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEndpoints waits until meshlet's /v1/state lists n instances.
func waitEndpoints(t *testing.T, w *meshlab.World, n int) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("meshlet to know %d instances", n), func() bool {
		_, body, err := w.AdminGet(context.Background(), "/v1/state")
		var st struct {
			Services []struct {
				Endpoints []string `json:"endpoints"`
			} `json:"services"`
		}
		if err != nil || json.Unmarshal([]byte(body), &st) != nil {
			return false
		}
		known := 0
		for _, s := range st.Services {
			known += len(s.Endpoints)
		}
		return known == n
	})
}

// cookieOf returns the name=value part of a Set-Cookie for CONTAINERID.
func cookieOf(setCookies []string) string {
	for _, sc := range setCookies {
		if strings.HasPrefix(sc, "CONTAINERID=") {
			return strings.SplitN(sc, ";", 2)[0]
		}
	}
	return ""
}

// Sticky sessions end to end, declared in the instances' Consul meta: a
// client that keeps its cookie keeps its instance through 100 requests,
// while instances are added and removed, and until its instance is
// killed; then it moves once, with a new cookie. Clients without a cookie,
// or with a forged one, are spread, and never reach an instance outside
// the healthy set.
func TestStickySessions(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, inst := range w.Instances {
		if err := w.RegisterMeta(inst, stickyMeta); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WaitPassing(ctx, "web", 3); err != nil {
		t.Fatal(err)
	}
	vip := resolveVIP(t, w, "web.local")
	plain := w.NewAppClient(vip, "web.local", false)
	waitFor(t, 15*time.Second, "the sticky meta to reach meshlet", func() bool { return cookieOf(plain.Get(ctx, "/", "").SetCookie) != "" })
	waitEndpoints(t, w, 3)

	keeper := w.NewAppClient(vip, "web.local", true)
	var pinned string
	setCookies := 0
	for i := range 100 {
		h := keeper.Get(ctx, "/", "")
		if !h.OK() {
			t.Fatalf("request %d: %+v", i, h)
		}
		if i == 0 {
			pinned = h.Instance
		}
		if h.Instance != pinned {
			t.Fatalf("request %d of the cookie-keeping client went to %s, want %s", i, h.Instance, pinned)
		}
		setCookies += len(h.SetCookie)
	}
	if setCookies != 1 {
		t.Errorf("the cookie-keeping client got %d Set-Cookie headers in 100 answers, want only the first", setCookies)
	}

	cookies := map[string]string{} // instance → its cookie, from cookieless answers
	spread := map[string]int{}
	for range 30 {
		h := plain.Get(ctx, "/", "")
		spread[h.Instance]++
		cookies[h.Instance] = cookieOf(h.SetCookie)
	}
	t.Logf("pinned client: 100 requests on %s; 30 cookieless requests: %v", pinned, spread)
	for _, inst := range w.Instances {
		if spread[inst.Name] < 5 || cookies[inst.Name] == "" {
			t.Errorf("cookieless clients: %v; want every instance to get its share, and a cookie each time", spread)
		}
	}

	// Forged and garbage cookies: the normal spread, a new cookie, and only
	// healthy instances. web-3 is made critical first: its genuine cookie
	// must not reach it either.
	sick := w.Instances[2]
	setHealth(t, w, sick, "fail")
	if err := w.WaitPassing(ctx, "web", 2); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, w, 2)
	for _, cookie := range []string{
		"CONTAINERID=garbage",
		"CONTAINERID=" + strings.Repeat("A", 22),
		"CONTAINERID=" + strings.Repeat("x", 6000),
		"CONTAINERID=" + sick.Host.IP.String() + ":8080",
		"CONTAINERID=web-3",
		cookies[sick.Name], // genuine, but its instance is critical
	} {
		got := map[string]int{}
		for range 8 {
			h := plain.Get(ctx, "/", cookie)
			if !h.OK() || cookieOf(h.SetCookie) == "" {
				t.Errorf("%.40q: %+v, want 200 and a new cookie", cookie, h)
			}
			got[h.Instance]++
		}
		if got[sick.Name] > 0 || got[w.Instances[0].Name] < 2 || got[w.Instances[1].Name] < 2 {
			t.Errorf("%.40q: %v; want the normal spread over the healthy web-1 and web-2", cookie, got)
		}
	}
	setHealth(t, w, sick, "ok")
	if err := w.WaitPassing(ctx, "web", 3); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, w, 3)

	// Scale 3 → 5 → 4, never removing an instance a client is pinned to.
	clients := make([]*meshlab.AppClient, 6)
	pins := make([]string, len(clients))
	for i := range clients {
		clients[i] = w.NewAppClient(vip, "web.local", true)
		pins[i] = clients[i].Get(ctx, "/", "").Instance
	}
	checkPins := func(when string) {
		t.Helper()
		for i, c := range clients {
			for range 10 {
				if h := c.Get(ctx, "/", ""); h.Instance != pins[i] || len(h.SetCookie) != 0 {
					t.Errorf("%s: client %d went to %s (Set-Cookie %q), want %s", when, i, h.Instance, h.SetCookie, pins[i])
					return
				}
			}
		}
	}
	for _, name := range []string{"web-4", "web-5"} {
		if _, err := w.AddInstanceMeta(name, stickyMeta); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WaitPassing(ctx, "web", 5); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, w, 5)
	checkPins("after scaling to 5")
	var spare *meshlab.Instance
	for _, inst := range w.Instances {
		if !slices.Contains(pins, inst.Name) {
			spare = inst
		}
	}
	spare.Proc.Kill()
	if err := w.Deregister(spare); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitPassing(ctx, "web", 4); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, w, 4)
	checkPins("after scaling back to 4 (" + spare.Name + " removed)")
	t.Logf("6 pinned clients on %v stayed through 3 → 5 → 4 instances", pins)

	// The pinned instance is killed: the next request succeeds elsewhere,
	// with a new cookie, and the client stays there.
	for _, inst := range w.Instances {
		if inst.Name == pinned {
			inst.Proc.Kill()
		}
	}
	h := keeper.Get(ctx, "/", "")
	if !h.OK() || h.Instance == pinned || cookieOf(h.SetCookie) == "" {
		t.Fatalf("first request after %s was killed: %+v; want success elsewhere with a new cookie", pinned, h)
	}
	moved := h.Instance
	for range 20 {
		if h := keeper.Get(ctx, "/", ""); !h.OK() || h.Instance != moved {
			t.Fatalf("after moving to %s: %+v", moved, h)
		}
	}
	t.Logf("after %s was killed the client moved to %s with a new cookie and stayed", pinned, moved)
}

func setHealth(t *testing.T, w *meshlab.World, inst *meshlab.Instance, state string) {
	t.Helper()
	resp, err := w.ConsulHost.HTTPClient(5*time.Second).Post(inst.URL("/admin/health?state="+state), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// One of three instances is killed during a constant-rate load of GETs,
// each on a new connection, some in flight on the instance as it dies:
// no request fails.
func TestKilledInstanceUnderLoadFailsNoRequest(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	c := w.NewAppClient(vip, "web.local", false)
	victim := w.Instances[2]

	done := make(chan []meshlab.Hit, 1)
	go func() { done <- c.ConstantRate(ctx, "/slow?ms=30", 600, 10*time.Millisecond) }() // 100/s for 6 s
	time.Sleep(2 * time.Second)
	victim.Proc.Kill() // returns once the process is gone
	// An answer sent just before the kill may still be on its way.
	dead := time.Now().Add(100 * time.Millisecond)
	hits := <-done

	before, after := 0, 0
	for _, h := range hits {
		if h.Instance == victim.Name {
			if h.At.Before(dead) {
				before++
			} else {
				after++
			}
		}
	}
	failed := meshlab.Failed(hits)
	t.Logf("%d GETs at 100/s, %s killed after 2 s: %v; failed: %d; %s served %d before the kill",
		len(hits), victim.Name, meshlab.CountBy(hits), len(failed), victim.Name, before)
	if len(failed) > 0 {
		t.Errorf("%d requests failed, want none; first: %+v", len(failed), failed[0])
	}
	if before == 0 || after > 0 || len(hits) != 600 {
		t.Errorf("%d requests, %s served %d before and %d after its kill; want 600, some before, none after", len(hits), victim.Name, before, after)
	}
	out := w.Meshlet.Output()
	retries := strings.Count(out, "retrying on another instance")
	t.Logf("meshlet retried %d requests on another instance, and logged %d ejections", retries, strings.Count(out, "ejecting instance"))
	if retries == 0 {
		t.Error("meshlet logged no retry; the test did not exercise one")
	}
}

// With least-request (declared in the meta), an instance that answers
// slowly gets fewer requests than the fast ones; round-robin, for
// comparison, gives it its full share.
func TestLeastRequestAvoidsASlowInstance(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	slow := w.Instances[0]
	if err := w.SetDelay(slow, 200); err != nil {
		t.Fatal(err)
	}
	run := func() map[string]int {
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := w.NewAppClient(vip, "web.local", false)
				for range 25 {
					h := c.Get(ctx, "/", "")
					mu.Lock()
					if h.OK() {
						counts[h.Instance]++
					} else {
						counts["failed"]++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return counts
	}
	rr := run()
	for _, inst := range w.Instances {
		if err := w.RegisterMeta(inst, map[string]string{"meshlet-balance": "least-request"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, "least-request to reach meshlet", func() bool {
		return strings.Contains(w.Meshlet.Output(), "policy=least-request")
	})
	if err := w.WaitPassing(ctx, "web", 3); err != nil {
		t.Fatal(err)
	}
	lr := run()
	t.Logf("8 clients × 25 requests, %s 200 ms slow: round-robin %v; least-request %v", slow.Name, rr, lr)
	if rr["failed"] > 0 || lr["failed"] > 0 {
		t.Errorf("failed requests: round-robin %d, least-request %d", rr["failed"], lr["failed"])
	}
	for _, fast := range w.Instances[1:] {
		if lr[slow.Name]*3 > lr[fast.Name] {
			t.Errorf("least-request: %s got %d, %s %d; want the slow one to get a third or less", slow.Name, lr[slow.Name], fast.Name, lr[fast.Name])
		}
	}
	if rr[slow.Name] < lr[slow.Name]*2 {
		t.Errorf("round-robin gave the slow instance %d, least-request %d: least-request should send it far fewer", rr[slow.Name], lr[slow.Name])
	}
}

// Consul is stopped for 30 s during a constant load, and started again
// (its checks start critical until they first run): no request fails, and
// /readyz and the log say meshlet routes on its last good instances.
// Then, with Consul down again, meshlet is restarted: it routes from the
// state it saved.
func TestConsulOutageFailsNoRequestAndRestartRoutesFromSavedState(t *testing.T) {
	stateDir := t.TempDir()
	args := []string{"--state-dir", stateDir}
	w := startWorld(t, meshlab.Options{PersistentConsul: true, Meshlet: args})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	c := w.NewAppClient(vip, "web.local", false)
	if h := c.Get(ctx, "/", ""); !h.OK() {
		t.Fatalf("before the outage: %+v", h)
	}
	waitFor(t, 10*time.Second, "the state file", func() bool {
		b, err := os.ReadFile(filepath.Join(stateDir, "state-"+strings.ReplaceAll(w.ConsulAddr(), ":", "_")+".json"))
		return err == nil && strings.Contains(string(b), "web-1")
	})

	done := make(chan []meshlab.Hit, 1)
	go func() { done <- c.ConstantRate(ctx, "/", 900, 50*time.Millisecond) }() // 20/s for 45 s
	time.Sleep(3 * time.Second)
	w.StopConsul()
	stopped := time.Now()
	waitFor(t, 10*time.Second, "/readyz to report fail-static", func() bool {
		code, body, err := w.AdminGet(ctx, "/readyz")
		return err == nil && code == http.StatusOK && strings.Contains(body, "fail-static")
	})
	_, readyz, _ := w.AdminGet(ctx, "/readyz")
	time.Sleep(30*time.Second - time.Since(stopped))
	if err := w.StartConsul(ctx); err != nil {
		t.Fatal(err)
	}
	outage := time.Since(stopped)
	hits := <-done
	failed := meshlab.Failed(hits)
	t.Logf("%d requests at 20/s, Consul down for %v: %v; failed: %d; /readyz during the outage: %q",
		len(hits), outage.Round(time.Second), meshlab.CountBy(hits), len(failed), strings.TrimSpace(readyz))
	if len(failed) > 0 {
		t.Errorf("%d requests failed during the outage, want none; first: %+v", len(failed), failed[0])
	}
	if !strings.Contains(w.Meshlet.Output(), "consul unreachable: fail-static") {
		t.Error("meshlet's log does not say it went fail-static")
	}
	// Its watches back off up to 30 s between attempts, so meshlet may see
	// Consul again only after the load ended.
	waitFor(t, 40*time.Second, "meshlet to log that it left fail-static", func() bool {
		return strings.Contains(w.Meshlet.Output(), "leaving fail-static")
	})
	t.Logf("meshlet left fail-static at most %v after Consul led again", (time.Since(stopped) - outage).Round(time.Second))

	// Consul down again, meshlet restarted: it routes from its saved state.
	if err := w.WaitPassing(ctx, "web", 3); err != nil {
		t.Fatal(err)
	}
	w.StopConsul()
	w.Meshlet.Signal(syscall.SIGTERM)
	if exited, err := w.Meshlet.Wait(20 * time.Second); !exited || err != nil {
		t.Fatalf("meshlet after SIGTERM: exited=%v err=%v", exited, err)
	}
	var err error
	if w.Meshlet, err = w.StartMeshlet(args...); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if again := resolveVIP(t, w, "web.local"); again != vip {
		t.Errorf("web.local → %s after the restart, want %s", again, vip)
	}
	_, readyz, _ = w.AdminGet(ctx, "/readyz")
	hits = c.ConstantRate(ctx, "/", 60, 20*time.Millisecond)
	failed = meshlab.Failed(hits)
	t.Logf("restarted with Consul down: %v; failed: %d; /readyz: %q", meshlab.CountBy(hits), len(failed), strings.TrimSpace(readyz))
	if len(failed) > 0 || !strings.Contains(readyz, "saved state") {
		t.Errorf("restarted during the outage: %d failed (%v); /readyz %q; want none failed and the saved state named",
			len(failed), meshlab.CountBy(failed), readyz)
	}
}

// An unusable state directory stops meshlet at start with one line naming
// the setting, and leaves no rule behind.
func TestUnusableStateDirIsRefused(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1, NoMeshlet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--state-dir", file}, {"--state-dir", file + "/sub"}} {
		cmd := w.App.Command(ctx, bins.Meshlet, append([]string{"run", "--consul", w.ConsulAddr(), "--resolv-conf", w.AppResolv}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		last := lines[len(lines)-1]
		if exitCode(err) <= 0 || !strings.HasPrefix(last, "meshlet: --state-dir: ") {
			t.Errorf("%v: exit %v, last line %q; want a non-zero exit and one line naming --state-dir", args, err, last)
		}
		t.Logf("%v → %s", args, last)
		if left := meshletLines(natRules(t, w)); len(left) > 0 {
			t.Errorf("%v: rules left behind:\n%s", args, strings.Join(left, "\n"))
		}
	}
}
