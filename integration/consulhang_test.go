package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// A Consul that hangs (its process stopped with SIGSTOP: connections are
// accepted, nothing answers) is treated as one that is down. The bounds
// asserted are meshlet's: a hang shows within pingEvery (5 s) + the call
// timeout (5 s); a start on a hung Consul is ready within the call
// timeout. Each gets a generous margin, as the machine is shared.
const (
	hangNoticedWithin = 25 * time.Second // 10 s + margin
	hungStartWithin   = 20 * time.Second // 5 s + margin
)

// stateOf reads the app host's state file.
func stateOf(t *testing.T, w *meshlab.World) (confirmed time.Time, mtime time.Time, body string) {
	t.Helper()
	path := filepath.Join(w.Lab.Dir(), "state-app", "state-"+strings.ReplaceAll(w.ConsulAddr(), ":", "_")+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, time.Time{}, ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}, time.Time{}, ""
	}
	var st struct {
		ConfirmedAt time.Time `json:"confirmed_at"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file %s: %v", path, err)
	}
	return st.ConfirmedAt, fi.ModTime(), string(b)
}

// readyzHas reports whether /readyz answers 200 and contains part.
func readyzHas(ctx context.Context, w *meshlab.World, part string) bool {
	code, body, err := w.AdminGet(ctx, "/readyz")
	return err == nil && code == http.StatusOK && strings.Contains(body, part)
}

// restartMeshlet stops meshlet with SIGTERM and starts it again, and
// returns when it started.
func restartMeshlet(t *testing.T, w *meshlab.World, stopOnly bool) time.Time {
	t.Helper()
	w.Meshlet.Signal(syscall.SIGTERM)
	if exited, err := w.Meshlet.Wait(20 * time.Second); !exited || err != nil {
		t.Fatalf("meshlet after SIGTERM: exited=%v err=%v\n%s", exited, err, meshlab.Tail(w.Meshlet.Output()))
	}
	if stopOnly {
		return time.Time{}
	}
	started := time.Now()
	var err error
	if w.Meshlet, err = w.StartMeshlet(); err != nil {
		t.Fatal(err)
	}
	return started
}

// startOnHungConsul starts meshlet while Consul hangs, and checks that it
// is ready, resolves web.local to vip and routes from its saved state
// within hungStartWithin.
func startOnHungConsul(ctx context.Context, t *testing.T, w *meshlab.World, c *meshlab.AppClient, started time.Time) {
	t.Helper()
	waitFor(t, hungStartWithin, "meshlet started on a hung Consul to be ready", func() bool { return readyzHas(ctx, w, "") })
	ready := time.Since(started)
	if got := resolveVIP(t, w, "web.local"); got != c.VIP {
		t.Errorf("web.local → %s from the saved state, want %s", got, c.VIP)
	}
	var first meshlab.Hit
	waitFor(t, hungStartWithin, "a routed request", func() bool { first = c.Get(ctx, "/", ""); return first.OK() })
	routed := time.Since(started)
	_, readyz, _ := w.AdminGet(ctx, "/readyz")
	t.Logf("started while Consul hangs: ready after %v, first request routed (to %s) after %v; /readyz: %q",
		ready.Round(time.Millisecond), first.Instance, routed.Round(time.Millisecond), strings.TrimSpace(readyz))
	if !strings.Contains(readyz, "routing on the saved state") {
		t.Errorf("/readyz = %q, want the saved state named", readyz)
	}
	hits := c.ConstantRate(ctx, "/", 20, 50*time.Millisecond)
	if failed := meshlab.Failed(hits); len(failed) > 0 {
		t.Errorf("requests from the saved state while Consul hangs: %v", meshlab.CountBy(hits))
	}
}

// awaitRecovery resumes Consul and waits for meshlet to leave fail-static.
func awaitRecovery(ctx context.Context, t *testing.T, w *meshlab.World) {
	t.Helper()
	if err := w.ResumeConsul(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	// The watches back off up to 10 s between attempts.
	waitFor(t, 30*time.Second, "/readyz without fail-static after SIGCONT", func() bool {
		code, body, err := w.AdminGet(ctx, "/readyz")
		return err == nil && code == http.StatusOK && !strings.Contains(body, "fail-static")
	})
	t.Logf("left fail-static %v after SIGCONT", time.Since(resumed).Round(time.Millisecond))
}

// (a) A meshlet started while Consul hangs, with the state of an earlier
// run, becomes ready and routes from it; when Consul resumes, meshlet
// leaves fail-static.
func TestConsulHungAtStartRoutesFromSavedState(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	c := w.NewAppClient(vip, "web.local", false)
	if h := c.Get(ctx, "/", ""); !h.OK() {
		t.Fatalf("before the hang: %+v", h)
	}
	waitFor(t, 10*time.Second, "the state file", func() bool { _, _, b := stateOf(t, w); return strings.Contains(b, "web-3") })
	restartMeshlet(t, w, true)

	if err := w.PauseConsul(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	var err error
	if w.Meshlet, err = w.StartMeshlet(); err != nil {
		t.Fatal(err)
	}
	startOnHungConsul(ctx, t, w, c, started)
	awaitRecovery(ctx, t, w)
	if h := c.Get(ctx, "/", ""); !h.OK() {
		t.Errorf("after Consul resumed: %+v", h)
	}
}

// (b) A running meshlet whose Consul hangs goes fail-static within a
// bounded time, keeps routing (new lookups and connections included), and
// does not stamp the state it writes during the hang as confirmed; after
// SIGCONT it leaves fail-static. (c) Restarted during a hang, it saves
// the time Consul last answered, and routes from that state at once.
func TestConsulHangWhileRunningAndRestart(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	c := w.NewAppClient(vip, "web.local", false)
	if h := c.Get(ctx, "/", ""); !h.OK() {
		t.Fatalf("before the hang: %+v", h)
	}
	waitFor(t, 10*time.Second, "the state file", func() bool { _, _, b := stateOf(t, w); return strings.Contains(b, "web-3") })

	// (b) steady state.
	load := make(chan []meshlab.Hit, 1)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() { load <- c.ConstantRate(loadCtx, "/", 2000, 100*time.Millisecond) }()
	time.Sleep(time.Second)
	if err := w.PauseConsul(); err != nil {
		t.Fatal(err)
	}
	hung := time.Now()
	waitFor(t, hangNoticedWithin, "/readyz to report fail-static", func() bool { return readyzHas(ctx, w, "fail-static") })
	noticed := time.Since(hung)
	_, readyz, _ := w.AdminGet(ctx, "/readyz")
	t.Logf("Consul SIGSTOPped: fail-static in /readyz after %v: %q", noticed.Round(time.Millisecond), strings.TrimSpace(readyz))
	if !strings.Contains(w.Meshlet.Output(), "consul does not answer") || !strings.Contains(w.Meshlet.Output(), "consul unreachable: fail-static") {
		t.Error("meshlet's log does not say that consul does not answer and that it went fail-static")
	}
	if got := resolveVIP(t, w, "web.local"); got != vip {
		t.Errorf("web.local → %s during the hang, want %s", got, vip)
	}
	// The state is rewritten at least every minute (its heartbeat): the
	// rewrite during the hang must keep the time Consul last answered.
	waitFor(t, 75*time.Second, "the state file rewritten during the hang", func() bool {
		_, mtime, _ := stateOf(t, w)
		return mtime.After(hung.Add(time.Second))
	})
	confirmed, mtime, _ := stateOf(t, w)
	t.Logf("state rewritten %v into the hang, confirmed %v before the hang", mtime.Sub(hung).Round(time.Second), hung.Sub(confirmed).Round(time.Millisecond))
	if confirmed.After(hung) {
		t.Errorf("the state written %v into the hang says confirmed at %v, %v after the hang began", mtime.Sub(hung), confirmed, confirmed.Sub(hung))
	}
	stopLoad()
	hits := <-load
	t.Logf("%d requests during the hang: %v", len(hits), meshlab.CountBy(hits))
	if failed := meshlab.Failed(hits); len(failed) > 0 {
		t.Errorf("%d requests failed while Consul hung; first: %+v", len(failed), failed[0])
	}
	awaitRecovery(ctx, t, w)
	// Consul's first answers after the hang are written at once.
	waitFor(t, 30*time.Second, "the state confirmed after the hang", func() bool { c, _, _ := stateOf(t, w); return c.After(hung) })

	// (c) restart during a hang.
	if err := w.PauseConsul(); err != nil {
		t.Fatal(err)
	}
	hung = time.Now()
	started := restartMeshlet(t, w, false)
	if confirmed, mtime, _ := stateOf(t, w); mtime.Before(hung) || confirmed.After(hung) {
		t.Errorf("state saved at the stop, %v into the hang: confirmed at %v, want before the hang (%v)", mtime.Sub(hung), confirmed, hung)
	}
	startOnHungConsul(ctx, t, w, c, started)
	awaitRecovery(ctx, t, w)
}
