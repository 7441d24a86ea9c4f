package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// failConsul makes every query of fc fail, as an unreachable Consul would.
func failConsul(fc *fakeConsul, fail bool) {
	fc.setFailing(catalogPath, fail)
	fc.setFailing(healthPath("web"), fail)
}

func statusHas(m *Mesh, part string) bool {
	return strings.Contains(strings.Join(m.Status(), "\n"), part)
}

func TestFailStaticKeepsRoutingAndSaysSo(t *testing.T) {
	a := whoAmI(t, "a")
	logs := &levelCounter{}
	fc, m, front := webMesh(t, func(c *Config) { c.Logger = slog.New(logs) }, instance(t, "web", "a", addrOf(a)))
	c := client(front)
	if _, _, h := do(t, c, http.MethodGet, ""); h.Get("X-Instance") != "a" {
		t.Fatal("not routing before the outage")
	}
	eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	if st := m.Status(); len(st) != 0 {
		t.Errorf("Status before the outage = %q, want nothing", st)
	}
	failConsul(fc, true)
	eventually(t, "fail-static in Status", func() bool { return statusHas(m, "fail-static: consul unreachable for") })
	for i := range 20 {
		if status, _, h := do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
			t.Fatalf("request %d during the outage: %d", i, status)
		}
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("not ready during an outage after good answers")
	}
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("ServiceExists during the outage = %v, %v", ok, err)
	}
	warns := logs.count(slog.LevelWarn)
	failConsul(fc, false)
	eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
	if warns == 0 || logs.count(slog.LevelInfo) == 0 {
		t.Errorf("%d warnings during the outage, %d infos: want the outage and the recovery logged", warns, logs.count(slog.LevelInfo))
	}
}

func TestMaxStaleRefusesOldInstances(t *testing.T) {
	a := whoAmI(t, "a")
	fc, m, front := webMesh(t, func(c *Config) { c.MaxStale = 300 * time.Millisecond }, instance(t, "web", "a", addrOf(a)))
	c := client(front)
	do(t, c, http.MethodGet, "")
	eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	failConsul(fc, true)
	eventually(t, "the outage noticed", func() bool { return statusHas(m, "fail-static") })
	if status, _, _ := do(t, c, http.MethodGet, ""); status != http.StatusOK {
		t.Errorf("within the max staleness: %d, want 200", status)
	}
	time.Sleep(350 * time.Millisecond)
	status, body, h := do(t, c, http.MethodGet, "")
	if status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != ErrCodeStale || !strings.Contains(body, "older than the max staleness") {
		t.Errorf("past the max staleness: %d %q %q, want 503 %s", status, h.Get("X-Meshlet-Error"), body, ErrCodeStale)
	}
	if !statusHas(m, "service web: last good instances are") {
		t.Errorf("Status = %q, want the stale service named", m.Status())
	}
	failConsul(fc, false)
	eventually(t, "routing again", func() bool { status, _, _ := do(t, c, http.MethodGet, ""); return status == http.StatusOK })
}

// Right after an outage Consul may call every instance critical until its
// checks run again: the instances passing before keep their traffic for
// the settle time; without an outage, all critical is a 503 at once.
func TestSettleAfterOutage(t *testing.T) {
	a, b := whoAmI(t, "a"), whoAmI(t, "b")
	fc, m, front := webMesh(t, func(c *Config) { c.SettleTime = 600 * time.Millisecond },
		instance(t, "web", "a", addrOf(a)), instance(t, "web", "b", addrOf(b)))
	c := client(front)
	do(t, c, http.MethodGet, "")
	eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	failConsul(fc, true)
	eventually(t, "the outage noticed", func() bool { return statusHas(m, "fail-static") })
	time.Sleep(50 * time.Millisecond)
	fc.setHealth("web", 20,
		withStatus(instance(t, "web", "a", addrOf(a)), api.HealthCritical), withStatus(instance(t, "web", "b", addrOf(b)), api.HealthCritical))
	failConsul(fc, false)
	eventually(t, "the critical answer", func() bool { return len(m.Endpoints("web")) == 0 })
	counts := map[string]int{}
	for range 10 {
		status, _, h := do(t, c, http.MethodGet, "")
		if status != http.StatusOK {
			t.Fatalf("while settling: %d %q", status, h.Get("X-Meshlet-Error"))
		}
		counts[h.Get("X-Instance")]++
	}
	if counts["a"] != 5 || counts["b"] != 5 {
		t.Errorf("while settling: %v, want both instances", counts)
	}
	time.Sleep(650 * time.Millisecond)
	if status, _, _ := do(t, c, http.MethodGet, ""); status != http.StatusServiceUnavailable {
		t.Errorf("after the settle time, all critical: %d, want 503", status)
	}

	// A Consul that lost its state (a dev agent) lists nothing at first.
	fc.setHealth("web", 21, instance(t, "web", "a", addrOf(a)))
	eventually(t, "a passing", func() bool { return len(m.Endpoints("web")) == 1 })
	failConsul(fc, true)
	eventually(t, "the second outage noticed", func() bool { return statusHas(m, "fail-static") })
	fc.setHealth("web", 3)
	fc.setCatalog(2)
	failConsul(fc, false)
	eventually(t, "the empty answer", func() bool { return len(m.Endpoints("web")) == 0 && len(m.Status()) == 0 })
	if status, _, h := do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("after a restart that lost the registrations: %d from %q, want a while settling", status, h.Get("X-Instance"))
	}
	if ok, _ := m.ServiceExists("web"); !ok {
		t.Error("the catalog forgot web while settling")
	}
}

// startMesh runs a Mesh on fc until the returned stop is called.
func startMesh(t *testing.T, fc *fakeConsul, tweak func(*Config)) (*Mesh, *proxyFront, func()) {
	t.Helper()
	cfg := Config{Consul: fc.client(t), FirstAnswerTimeout: 2 * time.Second, WaitTime: 2 * time.Second,
		SniffTimeout: 100 * time.Millisecond, RetryBackoff: func(int) time.Duration { return 5 * time.Millisecond }, Logger: testLogger(t),
		pingEvery: 20 * time.Millisecond}
	tweak(&cfg)
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		m.Shutdown(sctx)
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return m, serveMesh(t, m, "web", "web.local"), stop
}

func TestStateLetsARestartRouteWithoutConsul(t *testing.T) {
	dir := t.TempDir()
	a, b := whoAmI(t, "a"), whoAmI(t, "b")
	withState := func(c *Config) { c.StateDir, c.StateID = dir, "127.0.0.1:8500" }
	file := filepath.Join(dir, "state-127.0.0.1_8500.json")

	fc := newFakeConsul(t)
	fc.setCatalog(1, "web")
	fc.setHealth("web", 7, withMeta(instance(t, "web", "a", addrOf(a)), stickyMeta...))
	m, front, stop := startMesh(t, fc, withState)
	inst, sc := getWith(t, client(front), "")
	cookie := strings.SplitN(sc[0], ";", 2)[0]
	eventually(t, "the state file", func() bool {
		st, err := os.ReadFile(file)
		return err == nil && strings.Contains(string(st), addrOf(a))
	})
	_ = m
	stop()

	// Restarted while Consul is down: it routes on the saved instances,
	// and DNS still knows the service.
	down := newFakeConsul(t)
	failConsul(down, true)
	m2, front2, stop2 := startMesh(t, down, withState)
	eventually(t, "DNS answers from the saved catalog once Consul failed", func() bool {
		ok, err := m2.ServiceExists("web")
		return ok && err == nil
	})
	eventually(t, "ready on the saved state once Consul failed", func() bool { ok, _ := m2.CatalogReady(); return ok })
	start := time.Now()
	got, more := getWith(t, client(front2), cookie)
	if got != inst || len(more) != 0 {
		t.Errorf("from the saved state: %s (Set-Cookie %q), want %s, pinned as before", got, more, inst)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the first request waited %v; with a saved state it should not wait for Consul's first answer", d)
	}
	eventually(t, "the saved state named in Status", func() bool { return statusHas(m2, "routing on the saved state") })
	stop2()
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}

	// Consul answers: readiness waits for it rather than the file, and its
	// answer replaces the saved one at once.
	up := newFakeConsul(t)
	up.setHealth("web", 7, instance(t, "web", "b", addrOf(b)))
	up.setHolding(catalogPath, true)
	m3, front3, _ := startMesh(t, up, withState)
	time.Sleep(50 * time.Millisecond)
	if ok, why := m3.CatalogReady(); ok || !strings.Contains(why, "waiting for the first answer") {
		t.Errorf("ready = %v (%q) before Consul's first answer, with a saved state and no failure; want to wait", ok, why)
	}
	up.setCatalog(1, "web")
	eventually(t, "ready on Consul's answer", func() bool { ok, _ := m3.CatalogReady(); return ok })
	eventually(t, "b", func() bool { e := m3.Endpoints("web"); return len(e) == 1 && e[0].ID == "b" })
	for range 3 {
		if got, _ := getWith(t, client(front3), ""); got != "b" {
			t.Errorf("after Consul answered: %s, want b only", got)
		}
	}
}

func TestStateMaxStaleCountsFromTheSavedConfirmation(t *testing.T) {
	dir := t.TempDir()
	a := whoAmI(t, "a")
	st := stateFile{Version: stateVersion, Consul: "c", ConfirmedAt: time.Now().Add(-time.Hour), Catalog: []string{"web"},
		Services: map[string][]Endpoint{"web": {{ID: "a", Node: "n", Addr: addrOf(a), Weight: 1, Status: "passing"}}}}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state-c.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	down := newFakeConsul(t)
	failConsul(down, true)
	_, front, stop := startMesh(t, down, func(c *Config) { c.StateDir, c.StateID, c.MaxStale = dir, "c", 30*time.Minute })
	if status, _, h := do(t, client(front), http.MethodGet, ""); status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != ErrCodeStale {
		t.Errorf("a state confirmed an hour ago with a max staleness of 30m: %d %q, want 503 %s", status, h.Get("X-Meshlet-Error"), ErrCodeStale)
	}
	stop()
	_, front, _ = startMesh(t, down, func(c *Config) { c.StateDir, c.StateID, c.MaxStale = dir, "c", 2*time.Hour })
	if status, _, _ := do(t, client(front), http.MethodGet, ""); status != http.StatusOK {
		t.Errorf("with a max staleness of 2h: %d, want 200", status)
	}
}

func TestStateDirProblems(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setCatalog(1, "web")
	client := fc.client(t)
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o600)
	var sde *StateDirError
	if _, err := New(Config{Consul: client, StateDir: notADir}); !errors.As(err, &sde) || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("New with a file as state dir = %v, want a StateDirError", err)
	}
	made := filepath.Join(t.TempDir(), "a", "b")
	if _, err := New(Config{Consul: client, StateDir: made}); err != nil {
		t.Errorf("New with a missing state dir: %v, want it made", err)
	}
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir made as %v, %v; want mode 0700", fi.Mode(), err)
	}
	// A second meshlet on the same state runs, but keeps nothing and says so.
	dir := t.TempDir()
	m1, _, _ := startMesh(t, fc, func(c *Config) { c.StateDir = dir })
	m2, _, _ := startMesh(t, fc, func(c *Config) { c.StateDir = dir })
	if len(m1.Status()) != 0 || !statusHas(m2, "in use by another meshlet") {
		t.Errorf("Status = %q and %q; want the second to say the state is in use", m1.Status(), m2.Status())
	}
}

func TestDecodeState(t *testing.T) {
	now := time.Now().UTC().Format(time.RFC3339)
	for _, tc := range []struct {
		name, in string
		err      string
		eps      int
	}{
		{"good", `{"version":1,"confirmed_at":"` + now + `","catalog":["web"],"services":{"web":[{"id":"a","addr":"10.0.0.1:80","status":"passing"}]}}`, "", 1},
		{"not json", `{"version":`, "state file", 0},
		{"other version", `{"version":2,"confirmed_at":"` + now + `"}`, "version 2", 0},
		{"no time", `{"version":1}`, "not a plausible time", 0},
		{"future time", `{"version":1,"confirmed_at":"2999-01-01T00:00:00Z"}`, "not a plausible time", 0},
		{"bad entries dropped", `{"version":1,"confirmed_at":"` + now + `","services":{"web":[
			{"id":"a","addr":"10.0.0.1","status":"passing"},{"id":"","addr":"10.0.0.1:80","status":"passing"},
			{"id":"b","addr":"10.0.0.1:0","status":"passing"},{"id":"c","addr":"10.0.0.1:80","status":"weird"},
			{"id":"d","addr":"10.0.0.1:80","status":"critical"}],"bad name!":[{"id":"e","addr":"10.0.0.1:80","status":"passing"}]}}`, "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := decodeState([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, eps := range st.Services {
				n += len(eps)
			}
			if n != tc.eps || len(st.Services) > 1 {
				t.Errorf("kept %d endpoints in %d services, want %d in at most 1", n, len(st.Services), tc.eps)
			}
		})
	}
}

// hangTimes are the test's liveness settings: a hang shows within about
// pingEvery + CallTimeout.
func hangTimes(c *Config) {
	c.CallTimeout = 300 * time.Millisecond
	c.pingEvery = 50 * time.Millisecond
}

// A Consul that accepts connections and never answers (a stopped process)
// is noticed within pingEvery + CallTimeout, and meshlet then behaves as
// with one that is down: fail-static, still routing, and a state whose
// confirmation stays at Consul's last answer.
func TestConsulThatHangsGoesFailStatic(t *testing.T) {
	a := whoAmI(t, "a")
	dir := t.TempDir()
	fc, m, front := webMesh(t, func(c *Config) {
		hangTimes(c)
		c.WaitTime = time.Minute // a blocking query alone would notice nothing for a minute
		c.StateDir, c.StateID = dir, "c"
	}, instance(t, "web", "a", addrOf(a)))
	c := client(front)
	if _, _, h := do(t, c, http.MethodGet, ""); h.Get("X-Instance") != "a" {
		t.Fatal("not routing before the hang")
	}
	eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	eventually(t, "a blocking query of each", func() bool {
		return slices.Contains(fc.indexesSent(catalogPath), "1") && slices.Contains(fc.indexesSent(healthPath("web")), "7")
	})

	fc.setHung(true)
	hung := time.Now()
	eventually(t, "fail-static in Status", func() bool { return statusHas(m, "fail-static: consul unreachable for") })
	noticed := time.Since(hung)
	t.Logf("a hung Consul noticed after %v (pingEvery 50ms + CallTimeout 300ms)", noticed)
	if noticed > 2*time.Second {
		t.Errorf("the hang was noticed after %v, want about 350 ms", noticed)
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("not ready during a hang after good answers")
	}
	for i := range 10 {
		if status, _, h := do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
			t.Fatalf("request %d during the hang: %d", i, status)
		}
	}
	time.Sleep(200 * time.Millisecond)
	st := m.stateSnapshot(false)
	if st == nil || st.ConfirmedAt.After(hung) {
		t.Errorf("state written during the hang: %+v, want it confirmed before the hang began (%v)", st, hung)
	}
	if w := m.watchOf("web"); w == nil || time.Unix(0, w.failingSince.Load()).After(hung) {
		t.Error("web's staleness counts from after the hang began")
	}

	fc.setHung(false)
	eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
	// Consul's answers are the same as before the hang, yet the file
	// learns at once that they were confirmed again.
	eventually(t, "the state file confirmed after the hang", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "state-c.json"))
		if err != nil {
			return false
		}
		st, err := decodeState(b)
		return err == nil && st.ConfirmedAt.After(hung)
	})
}

// A meshlet started while Consul hangs, with a saved state, is ready and
// routes on it once the first query's deadline has passed, and requests
// that came before wait no longer than that.
func TestStartWhileConsulHangsRoutesFromSavedState(t *testing.T) {
	dir := t.TempDir()
	a := whoAmI(t, "a")
	withState := func(c *Config) {
		hangTimes(c)
		c.StateDir, c.StateID = dir, "c"
		c.FirstAnswerTimeout = 10 * time.Second // so that only the query's deadline can release the request
	}
	fc := newFakeConsul(t)
	fc.setCatalog(1, "web")
	fc.setHealth("web", 7, instance(t, "web", "a", addrOf(a)))
	m, front, stop := startMesh(t, fc, withState)
	if got, _ := getWith(t, client(front), ""); got != "a" {
		t.Fatalf("first run: %s", got)
	}
	eventually(t, "the state file", func() bool {
		st, err := os.ReadFile(filepath.Join(dir, "state-c.json"))
		return err == nil && strings.Contains(string(st), addrOf(a))
	})
	_ = m
	stop()

	hung := newFakeConsul(t)
	hung.setHung(true)
	start := time.Now()
	m2, front2, _ := startMesh(t, hung, withState)
	reqDone := make(chan time.Duration, 1)
	go func() {
		s := time.Now()
		status, _, _ := do(t, client(front2), http.MethodGet, "")
		if status != http.StatusOK {
			t.Errorf("a request made at start, while Consul hangs: %d", status)
		}
		reqDone <- time.Since(s)
	}()
	eventually(t, "ready on the saved state", func() bool { ok, _ := m2.CatalogReady(); return ok })
	ready := time.Since(start)
	if ok, err := m2.ServiceExists("web"); !ok || err != nil {
		t.Errorf("ServiceExists while Consul hangs = %v, %v; want the saved catalog", ok, err)
	}
	waited := <-reqDone
	t.Logf("started with Consul hung: ready after %v, the first request answered after %v (CallTimeout 300ms)", ready, waited)
	if ready > 2*time.Second || waited > 3*time.Second {
		t.Errorf("ready after %v, first request after %v; want both about CallTimeout", ready, waited)
	}
	if !statusHas(m2, "routing on the saved state") {
		t.Errorf("Status = %q, want the saved state named", m2.Status())
	}
}
