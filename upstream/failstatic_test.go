package upstream_test

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

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/outbound"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// failConsul makes every query of fc fail, as an unreachable Consul would.
func failConsul(fc *upstreamtest.FakeConsul, fail bool) {
	fc.SetFailing(upstreamtest.CatalogPath, fail)
	fc.SetFailing(upstreamtest.HealthPath("web"), fail)
}

func statusHas(m *upstream.Mesh, part string) bool {
	return strings.Contains(strings.Join(m.Status(), "\n"), part)
}

func TestFailStaticKeepsRoutingAndSaysSo(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	logs := &upstreamtest.LevelCounter{}
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.Logger = slog.New(logs) }, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	if _, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); h.Get("X-Instance") != "a" {
		t.Fatal("not routing before the outage")
	}
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	if st := m.Status(); len(st) != 0 {
		t.Errorf("Status before the outage = %q, want nothing", st)
	}
	failConsul(fc, true)
	upstreamtest.Eventually(t, "fail-static in Status", func() bool { return statusHas(m, "fail-static: consul unreachable for") })
	for i := range 20 {
		if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
			t.Fatalf("request %d during the outage: %d", i, status)
		}
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("not ready during an outage after good answers")
	}
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("ServiceExists during the outage = %v, %v", ok, err)
	}
	warns := logs.Count(slog.LevelWarn)
	failConsul(fc, false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
	if warns == 0 || logs.Count(slog.LevelInfo) == 0 {
		t.Errorf("%d warnings during the outage, %d infos: want the outage and the recovery logged", warns, logs.Count(slog.LevelInfo))
	}
}

func TestMaxStaleRefusesOldInstances(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.MaxStale = 300 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	upstreamtest.Do(t, c, http.MethodGet, "")
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	failConsul(fc, true)
	upstreamtest.Eventually(t, "the outage noticed", func() bool { return statusHas(m, "fail-static") })
	if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
		t.Errorf("within the max staleness: %d, want 200", status)
	}
	time.Sleep(350 * time.Millisecond)
	status, body, h := upstreamtest.Do(t, c, http.MethodGet, "")
	if status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != upstream.ErrCodeStale || !strings.Contains(body, "older than the max staleness") {
		t.Errorf("past the max staleness: %d %q %q, want 503 %s", status, h.Get("X-Meshlet-Error"), body, upstream.ErrCodeStale)
	}
	if !statusHas(m, "service web: last good instances are") {
		t.Errorf("Status = %q, want the stale service named", m.Status())
	}
	failConsul(fc, false)
	upstreamtest.Eventually(t, "routing again", func() bool { status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); return status == http.StatusOK })
}

// Right after an outage Consul may call every instance critical until its
// checks run again (registered again, without output): the instances
// passing before keep their traffic for the settle time; checks that ran
// and failed are a 503 at once (TestNoSettleWithoutEvidenceOfLostState).
func TestSettleAfterOutage(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.SettleTime = 600 * time.Millisecond },
		upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	c := upstreamtest.Client(front)
	upstreamtest.Do(t, c, http.MethodGet, "")
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	failConsul(fc, true)
	upstreamtest.Eventually(t, "the outage noticed", func() bool { return statusHas(m, "fail-static") })
	time.Sleep(50 * time.Millisecond)
	fc.SetHealth("web", 20,
		upstreamtest.WithResetCheck(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a))), upstreamtest.WithResetCheck(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b))))
	failConsul(fc, false)
	upstreamtest.Eventually(t, "the critical answer", func() bool { return len(m.Endpoints("web")) == 0 })
	counts := map[string]int{}
	for range 10 {
		status, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
		if status != http.StatusOK {
			t.Fatalf("while settling: %d %q", status, h.Get("X-Meshlet-Error"))
		}
		counts[h.Get("X-Instance")]++
	}
	if counts["a"] != 5 || counts["b"] != 5 {
		t.Errorf("while settling: %v, want both instances", counts)
	}
	time.Sleep(650 * time.Millisecond)
	if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusServiceUnavailable {
		t.Errorf("after the settle time, all critical: %d, want 503", status)
	}

	// A Consul that lost its state (a dev agent) lists nothing at first.
	fc.SetHealth("web", 21, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	upstreamtest.Eventually(t, "a passing", func() bool { return len(m.Endpoints("web")) == 1 })
	failConsul(fc, true)
	upstreamtest.Eventually(t, "the second outage noticed by web's watch", func() bool {
		since, _ := m.FailingSince("web")
		return statusHas(m, "fail-static") && since.UnixNano() != 0
	})
	fc.SetHealth("web", 3)
	fc.SetCatalog(2)
	failConsul(fc, false)
	upstreamtest.Eventually(t, "the empty answer", func() bool { return len(m.Endpoints("web")) == 0 && len(m.Status()) == 0 })
	if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("after a restart that lost the registrations: %d from %q, want a while settling", status, h.Get("X-Instance"))
	}
	if ok, _ := m.ServiceExists("web"); !ok {
		t.Error("the catalog forgot web while settling")
	}
}

// startMesh runs a Mesh on fc, with its dispatcher, until the returned
// stop is called.
func startMesh(t *testing.T, fc *upstreamtest.FakeConsul, tweak func(*upstream.Config)) (*upstream.Mesh, *upstreamtest.Front, func()) {
	t.Helper()
	cfg := upstream.Config{Consul: fc.Client(t), FirstAnswerTimeout: 2 * time.Second, WaitTime: 2 * time.Second,
		RetryBackoff: func(int) time.Duration { return 5 * time.Millisecond }, Logger: upstreamtest.Logger(t),
		PingEvery: 20 * time.Millisecond}
	tweak(&cfg)
	m, err := upstream.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	d, err := outbound.New(m, outbound.Config{SniffTimeout: 2 * time.Second}) // never raw TCP on a loaded machine
	if err != nil {
		t.Fatalf("outbound.New: %v", err)
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
		d.Shutdown(sctx)
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return m, serveWeb(t, d), stop
}

func TestStateLetsARestartRouteWithoutConsul(t *testing.T) {
	dir := t.TempDir()
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	withState := func(c *upstream.Config) { c.StateDir, c.StateID = dir, "127.0.0.1:8500" }
	file := filepath.Join(dir, "state-127.0.0.1_8500.json")

	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.StickyMeta...))
	m, front, stop := startMesh(t, fc, withState)
	inst, sc := upstreamtest.GetWith(t, upstreamtest.Client(front), "")
	cookie := strings.SplitN(sc[0], ";", 2)[0]
	upstreamtest.Eventually(t, "the state file", func() bool {
		st, err := os.ReadFile(file)
		return err == nil && strings.Contains(string(st), upstreamtest.AddrOf(a))
	})
	_ = m
	stop()

	// Restarted while Consul is down: it routes on the saved instances,
	// and DNS still knows the service.
	down := upstreamtest.NewFakeConsul(t)
	failConsul(down, true)
	m2, front2, stop2 := startMesh(t, down, withState)
	upstreamtest.Eventually(t, "DNS answers from the saved catalog once Consul failed", func() bool {
		ok, err := m2.ServiceExists("web")
		return ok && err == nil
	})
	upstreamtest.Eventually(t, "ready on the saved state once Consul failed", func() bool { ok, _ := m2.CatalogReady(); return ok })
	start := time.Now()
	got, more := upstreamtest.GetWith(t, upstreamtest.Client(front2), cookie)
	if got != inst || len(more) != 0 {
		t.Errorf("from the saved state: %s (Set-Cookie %q), want %s, pinned as before", got, more, inst)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the first request waited %v; with a saved state it should not wait for Consul's first answer", d)
	}
	upstreamtest.Eventually(t, "the saved state named in Status", func() bool { return statusHas(m2, "routing on the saved state") })
	stop2()
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}

	// Consul answers: readiness waits for it rather than the file, and its
	// answer replaces the saved one at once.
	up := upstreamtest.NewFakeConsul(t)
	up.SetHealth("web", 7, upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	up.SetHolding(upstreamtest.CatalogPath, true)
	m3, front3, _ := startMesh(t, up, withState)
	time.Sleep(50 * time.Millisecond)
	if ok, why := m3.CatalogReady(); ok || !strings.Contains(why, "waiting for the first answer") {
		t.Errorf("ready = %v (%q) before Consul's first answer, with a saved state and no failure; want to wait", ok, why)
	}
	up.SetCatalog(1, "web")
	upstreamtest.Eventually(t, "ready on Consul's answer", func() bool { ok, _ := m3.CatalogReady(); return ok })
	upstreamtest.Eventually(t, "b", func() bool { e := m3.Endpoints("web"); return len(e) == 1 && e[0].ID == "b" })
	for range 3 {
		if got, _ := upstreamtest.GetWith(t, upstreamtest.Client(front3), ""); got != "b" {
			t.Errorf("after Consul answered: %s, want b only", got)
		}
	}
}

func TestStateMaxStaleCountsFromTheSavedConfirmation(t *testing.T) {
	dir := t.TempDir()
	a := upstreamtest.WhoAmI(t, "a")
	st := upstream.StateFile{Version: upstream.StateVersion, Consul: "c", ConfirmedAt: time.Now().Add(-time.Hour), Catalog: []string{"web"},
		Services: map[string][]upstream.Endpoint{"web": {{ID: "a", Node: "n", Addr: upstreamtest.AddrOf(a), Weight: 1, Status: "passing"}}}}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state-c.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	down := upstreamtest.NewFakeConsul(t)
	failConsul(down, true)
	_, front, stop := startMesh(t, down, func(c *upstream.Config) { c.StateDir, c.StateID, c.MaxStale = dir, "c", 30*time.Minute })
	if status, _, h := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, ""); status != http.StatusServiceUnavailable || h.Get("X-Meshlet-Error") != upstream.ErrCodeStale {
		t.Errorf("a state confirmed an hour ago with a max staleness of 30m: %d %q, want 503 %s", status, h.Get("X-Meshlet-Error"), upstream.ErrCodeStale)
	}
	stop()
	_, front, _ = startMesh(t, down, func(c *upstream.Config) { c.StateDir, c.StateID, c.MaxStale = dir, "c", 2*time.Hour })
	if status, _, _ := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, ""); status != http.StatusOK {
		t.Errorf("with a max staleness of 2h: %d, want 200", status)
	}
}

func TestStateDirProblems(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	client := fc.Client(t)
	notADir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notADir, nil, 0o600)
	var sde *upstream.StateDirError
	if _, err := upstream.New(upstream.Config{Consul: client, StateDir: notADir}); !errors.As(err, &sde) || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("New with a file as state dir = %v, want a StateDirError", err)
	}
	made := filepath.Join(t.TempDir(), "a", "b")
	if _, err := upstream.New(upstream.Config{Consul: client, StateDir: made}); err != nil {
		t.Errorf("New with a missing state dir: %v, want it made", err)
	}
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir made as %v, %v; want mode 0700", fi.Mode(), err)
	}
	// A second meshlet on the same state runs, but keeps nothing and says so.
	dir := t.TempDir()
	m1, _, _ := startMesh(t, fc, func(c *upstream.Config) { c.StateDir = dir })
	m2, _, _ := startMesh(t, fc, func(c *upstream.Config) { c.StateDir = dir })
	if len(m1.Status()) != 0 || !statusHas(m2, "in use by another meshlet") {
		t.Errorf("Status = %q and %q; want the second to say the state is in use", m1.Status(), m2.Status())
	}
}

// hangTimes are the test's liveness settings: a hang shows within about
// PingEvery + CallTimeout.
func hangTimes(c *upstream.Config) {
	c.CallTimeout = 300 * time.Millisecond
	c.PingEvery = 50 * time.Millisecond
}

// A Consul that accepts connections and never answers (a stopped process)
// is noticed within PingEvery + CallTimeout, and meshlet then behaves as
// with one that is down: fail-static, still routing, and a state whose
// confirmation stays at Consul's last answer.
func TestConsulThatHangsGoesFailStatic(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	dir := t.TempDir()
	fc, m, front := webMesh(t, func(c *upstream.Config) {
		hangTimes(c)
		c.WaitTime = time.Minute // a blocking query alone would notice nothing for a minute
		c.StateDir, c.StateID = dir, "c"
	}, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	if _, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); h.Get("X-Instance") != "a" {
		t.Fatal("not routing before the hang")
	}
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	upstreamtest.Eventually(t, "a blocking query of each", func() bool {
		return slices.Contains(fc.IndexesSent(upstreamtest.CatalogPath), "1") && slices.Contains(fc.IndexesSent(upstreamtest.HealthPath("web")), "7")
	})

	fc.SetHung(true)
	hung := time.Now()
	upstreamtest.Eventually(t, "fail-static in Status", func() bool { return statusHas(m, "fail-static: consul unreachable for") })
	noticed := time.Since(hung)
	t.Logf("a hung Consul noticed after %v (PingEvery 50ms + CallTimeout 300ms)", noticed)
	if noticed > 2*time.Second {
		t.Errorf("the hang was noticed after %v, want about 350 ms", noticed)
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("not ready during a hang after good answers")
	}
	for i := range 10 {
		if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
			t.Fatalf("request %d during the hang: %d", i, status)
		}
	}
	time.Sleep(200 * time.Millisecond)
	st := m.StateSnapshot(false)
	if st == nil || st.ConfirmedAt.After(hung) {
		t.Errorf("state written during the hang: %+v, want it confirmed before the hang began (%v)", st, hung)
	}
	if since, ok := m.FailingSince("web"); !ok || since.After(hung) {
		t.Error("web's staleness counts from after the hang began")
	}

	fc.SetHung(false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
	// Consul's answers are the same as before the hang, yet the file
	// learns at once that they were confirmed again.
	upstreamtest.Eventually(t, "the state file confirmed after the hang", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "state-c.json"))
		if err != nil {
			return false
		}
		st, err := upstream.DecodeState(b)
		return err == nil && st.ConfirmedAt.After(hung)
	})
}

// A meshlet started while Consul hangs, with a saved state, is ready and
// routes on it once the first query's deadline has passed, and requests
// that came before wait no longer than that.
func TestStartWhileConsulHangsRoutesFromSavedState(t *testing.T) {
	dir := t.TempDir()
	a := upstreamtest.WhoAmI(t, "a")
	withState := func(c *upstream.Config) {
		hangTimes(c)
		c.StateDir, c.StateID = dir, "c"
		c.FirstAnswerTimeout = 10 * time.Second // so that only the query's deadline can release the request
	}
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	m, front, stop := startMesh(t, fc, withState)
	if got, _ := upstreamtest.GetWith(t, upstreamtest.Client(front), ""); got != "a" {
		t.Fatalf("first run: %s", got)
	}
	upstreamtest.Eventually(t, "the state file", func() bool {
		st, err := os.ReadFile(filepath.Join(dir, "state-c.json"))
		return err == nil && strings.Contains(string(st), upstreamtest.AddrOf(a))
	})
	_ = m
	stop()

	hung := upstreamtest.NewFakeConsul(t)
	hung.SetHung(true)
	start := time.Now()
	m2, front2, _ := startMesh(t, hung, withState)
	reqDone := make(chan time.Duration, 1)
	go func() {
		s := time.Now()
		status, _, _ := upstreamtest.Do(t, upstreamtest.Client(front2), http.MethodGet, "")
		if status != http.StatusOK {
			t.Errorf("a request made at start, while Consul hangs: %d", status)
		}
		reqDone <- time.Since(s)
	}()
	upstreamtest.Eventually(t, "ready on the saved state", func() bool { ok, _ := m2.CatalogReady(); return ok })
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
