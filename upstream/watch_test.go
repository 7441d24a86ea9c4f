package upstream

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCatalogIndexZeroIsNeverAWait(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setCatalog(0, "web")
	m := newTestMesh(t, fc, nil)
	eventually(t, "a blocking catalog query", func() bool { return len(fc.indexesSent(catalogPath)) >= 2 })
	sent := fc.indexesSent(catalogPath)
	if sent[0] != "" {
		t.Errorf("first query sent index %q, want none", sent[0])
	}
	for i, idx := range sent[1:] {
		if idx != "1" {
			t.Errorf("query %d after an answer with index 0 sent index %q, want 1", i+1, idx)
		}
	}
	if ok, err := m.ServiceExists("WEB"); !ok || err != nil {
		t.Errorf("ServiceExists(WEB) = %v, %v; want true", ok, err)
	}
}

func TestCatalogIndexGoingBackwardsRestartsTheWatch(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setCatalog(10, "web")
	m := newTestMesh(t, fc, nil)
	eventually(t, "a query blocking on index 10", func() bool { return slices.Contains(fc.indexesSent(catalogPath), "10") })

	fc.setCatalog(5, "web", "api")
	eventually(t, "a query blocking on index 5", func() bool { return slices.Contains(fc.indexesSent(catalogPath), "5") })
	sent := fc.indexesSent(catalogPath)
	at5 := slices.Index(sent, "5")
	if sent[at5-1] != "" {
		t.Errorf("indexes sent = %q; want a non-blocking query between 10 and 5", sent)
	}
	if ok, _ := m.ServiceExists("api"); !ok {
		t.Error("the answer with the lower index was not applied")
	}
}

func TestCatalogReadiness(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setFailing(catalogPath, true)
	m := newTestMesh(t, fc, nil)

	eventually(t, "a failed catalog query", func() bool { return len(fc.indexesSent(catalogPath)) >= 1 })
	eventually(t, "the failure as reason", func() bool {
		_, reason := m.CatalogReady()
		return strings.Contains(reason, "500")
	})
	if ok, _ := m.CatalogReady(); ok {
		t.Error("CatalogReady = true before any answer")
	}
	if _, err := m.ServiceExists("web"); err == nil {
		t.Error("ServiceExists gave no error before the catalog answered")
	}
	if names := m.ServiceNames(); names != nil {
		t.Errorf("ServiceNames = %q before any answer, want nil", names)
	}

	fc.setCatalog(3, "Web", "api")
	eventually(t, "catalog ready", func() bool { ok, _ := m.CatalogReady(); return ok })
	if names := m.ServiceNames(); !slices.Equal(names, []string{"api", "web"}) {
		t.Errorf("ServiceNames = %q, want [api web]", names)
	}
	if ok, err := m.ServiceExists("db"); ok || err != nil {
		t.Errorf("ServiceExists(db) = %v, %v; want false, nil", ok, err)
	}

	// Consul failing again keeps the last good answer.
	fc.setFailing(catalogPath, true)
	before := len(fc.indexesSent(catalogPath))
	eventually(t, "more failed queries", func() bool { return len(fc.indexesSent(catalogPath)) >= before+3 })
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("ServiceExists(web) during an outage = %v, %v; want the last answer", ok, err)
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("CatalogReady = false during an outage after a good answer")
	}
}

func TestHealthKeepsLastGoodSetThroughErrorsAndWarnsOnce(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setCatalog(1, "web")
	fc.setHealth("web", 4, instance(t, "web", "a", "10.0.0.1:80"), instance(t, "web", "b", "10.0.0.2:80"))
	logs := &levelCounter{}
	m := newTestMesh(t, fc, func(c *Config) { c.Logger = slog.New(logs) })
	m.Watch("web")
	eventually(t, "two endpoints", func() bool { return len(m.Endpoints("web")) == 2 })

	fc.setFailing(healthPath("web"), true)
	before := len(fc.indexesSent(healthPath("web")))
	eventually(t, "several failed queries", func() bool { return len(fc.indexesSent(healthPath("web"))) >= before+5 })
	if got := m.Endpoints("web"); len(got) != 2 {
		t.Errorf("endpoints during errors = %v, want the last good two", got)
	}
	if got := logs.count(slog.LevelWarn); got != 1 {
		t.Errorf("warnings in one failure streak = %d, want 1", got)
	}

	fc.setHealth("web", 9, instance(t, "web", "c", "10.0.0.3:8080"))
	eventually(t, "the new set", func() bool {
		got := m.Endpoints("web")
		return len(got) == 1 && got[0].Addr == "10.0.0.3:8080" && got[0].ID == "c"
	})

	// A new streak warns again.
	fc.setFailing(healthPath("web"), true)
	eventually(t, "a second warning", func() bool { return logs.count(slog.LevelWarn) == 2 })
}

func TestWatchBeforeRunStartsWithRun(t *testing.T) {
	fc := newFakeConsul(t)
	fc.setCatalog(1, "web")
	fc.setHealth("web", 2, instance(t, "web", "a", "10.0.0.1:80"))
	m, err := New(Config{Consul: fc.client(t), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	m.Watch("Web")
	m.Watch("web")
	if got := m.Endpoints("web"); got != nil {
		t.Errorf("endpoints before Run = %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the endpoint", func() bool { return len(m.Endpoints("WEB")) == 1 })
	if got := m.Endpoints("db"); got != nil {
		t.Errorf("endpoints of an unwatched service = %v, want nil", got)
	}
}

func TestFetchDeadline(t *testing.T) {
	for _, tc := range []struct {
		name       string
		waitIndex  uint64
		wait, call time.Duration
		want       time.Duration
	}{
		{"a query that does not block gets the call timeout", 0, 5 * time.Minute, 5 * time.Second, 5 * time.Second},
		{"a blocking one its wait, Consul's jitter and the call timeout", 42, 5 * time.Minute, 5 * time.Second, 5*time.Minute + 18750*time.Millisecond + 5*time.Second},
		{"short waits too", 1, 16 * time.Second, time.Second, 18 * time.Second},
		{"no call timeout is the default one", 0, time.Minute, 0, DefaultCallTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fetchDeadline(tc.waitIndex, tc.wait, tc.call); got != tc.want {
				t.Errorf("fetchDeadline(%d, %v, %v) = %v, want %v", tc.waitIndex, tc.wait, tc.call, got, tc.want)
			}
		})
	}
}

// A query Consul never answers fails at its deadline, as one Consul
// refuses does: first the one that does not block, then a blocking one.
func TestBlockingQueryFailsAtItsDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type attempt struct {
		waitIndex uint64
		deadline  time.Duration // left when the fetch began
		took      time.Duration
		err       error
	}
	attempts := make(chan attempt, 10)
	calls := 0
	q := &blockingQuery[int]{
		what:        "test query",
		waitTime:    160 * time.Millisecond,
		callTimeout: 100 * time.Millisecond,
		fetch: func(ctx context.Context, waitIndex uint64) (int, uint64, error) {
			calls++
			if calls == 2 {
				return 1, 7, nil // one answer, so that the next query blocks
			}
			d, _ := ctx.Deadline()
			left := time.Until(d)
			<-ctx.Done() // a Consul that never answers
			attempts <- attempt{waitIndex: waitIndex, deadline: left}
			return 0, 0, ctx.Err()
		},
		apply:   func(int) {},
		backoff: func(int) time.Duration { return 0 },
		log:     testLogger(t),
	}
	var errs []error
	q.failed = func(err error, _ int) {
		errs = append(errs, err)
		if len(errs) == 2 {
			cancel()
		}
	}
	start := time.Now()
	q.run(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("two unanswered queries took %v", took)
	}
	close(attempts)
	var got []attempt
	for a := range attempts {
		got = append(got, a)
	}
	if len(got) != 2 || len(errs) != 2 {
		t.Fatalf("attempts %+v, errors %v; want two of each", got, errs)
	}
	for i, want := range []struct {
		waitIndex uint64
		deadline  time.Duration
	}{{0, 100 * time.Millisecond}, {7, 270 * time.Millisecond}} {
		if got[i].waitIndex != want.waitIndex || got[i].deadline > want.deadline || got[i].deadline < want.deadline-150*time.Millisecond {
			t.Errorf("attempt %d: index %d with %v left, want index %d with %v", i, got[i].waitIndex, got[i].deadline, want.waitIndex, want.deadline)
		}
		if !strings.Contains(errs[i].Error(), "test query: no answer from consul within") {
			t.Errorf("error %d = %v, want it to say consul did not answer", i, errs[i])
		}
	}
}

// The liveness check asks Consul only when nothing answered for a while,
// and a silence ends every call in flight with a reason; calls made
// afterwards run on.
func TestLivenessAbortsCallsInFlightWhenConsulIsSilent(t *testing.T) {
	var l liveness
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hung := make(chan struct{})
	var pings atomic.Int64
	ping := func(ctx context.Context) error {
		pings.Add(1)
		select {
		case <-hung:
			<-ctx.Done()
			return ctx.Err()
		default:
			return nil
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); l.run(ctx, ping, 200*time.Millisecond, 100*time.Millisecond, testLogger(t)) }()
	defer func() { cancel(); <-done }()

	eventually(t, "a first answer", func() bool { return !l.lastAnswer().IsZero() })
	// Answers from the watches keep the check quiet.
	before := pings.Load()
	for range 60 {
		l.answered(time.Now())
		time.Sleep(10 * time.Millisecond)
	}
	if n := pings.Load() - before; n > 1 {
		t.Errorf("%d liveness checks in 600 ms while queries answered every 10 ms, want at most 1 (3 unasked)", n)
	}

	call, stop := l.callContext(context.Background(), time.Hour)
	defer stop()
	close(hung)
	last := l.lastAnswer()
	start := time.Now()
	select {
	case <-call.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a call in flight outlived a silent Consul")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the silence ended the call after %v, want about 300 ms (every + timeout)", took)
	}
	if cause := context.Cause(call); cause == nil || !strings.Contains(cause.Error(), "consul does not answer") {
		t.Errorf("cause = %v, want it to say consul does not answer", cause)
	}
	if !l.lastAnswer().Equal(last) {
		t.Error("the last answer moved while Consul was silent")
	}
	if got := time.Unix(0, l.since(time.Now())); !got.Equal(last) {
		t.Errorf("a failure streak starting now would date from %v, want the last answer %v", got, last)
	}
	cancel() // no further check, whose abort would end the fresh call too
	<-done
	fresh, stopFresh := l.callContext(context.Background(), time.Hour)
	defer stopFresh()
	if fresh.Err() != nil {
		t.Error("a call made after the abort was ended by it")
	}
}
