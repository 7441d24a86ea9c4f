package upstream_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

func TestCatalogIndexZeroIsNeverAWait(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(0, "web")
	m := upstreamtest.NewMesh(t, fc, nil)
	upstreamtest.Eventually(t, "a blocking catalog query", func() bool { return len(fc.IndexesSent(upstreamtest.CatalogPath)) >= 2 })
	sent := fc.IndexesSent(upstreamtest.CatalogPath)
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
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(10, "web")
	m := upstreamtest.NewMesh(t, fc, nil)
	upstreamtest.Eventually(t, "a query blocking on index 10", func() bool { return slices.Contains(fc.IndexesSent(upstreamtest.CatalogPath), "10") })

	fc.SetCatalog(5, "web", "api")
	upstreamtest.Eventually(t, "a query blocking on index 5", func() bool { return slices.Contains(fc.IndexesSent(upstreamtest.CatalogPath), "5") })
	sent := fc.IndexesSent(upstreamtest.CatalogPath)
	at5 := slices.Index(sent, "5")
	if sent[at5-1] != "" {
		t.Errorf("indexes sent = %q; want a non-blocking query between 10 and 5", sent)
	}
	if ok, _ := m.ServiceExists("api"); !ok {
		t.Error("the answer with the lower index was not applied")
	}
}

func TestCatalogReadiness(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetFailing(upstreamtest.CatalogPath, true)
	m := upstreamtest.NewMesh(t, fc, nil)

	upstreamtest.Eventually(t, "a failed catalog query", func() bool { return len(fc.IndexesSent(upstreamtest.CatalogPath)) >= 1 })
	upstreamtest.Eventually(t, "the failure as reason", func() bool {
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

	fc.SetCatalog(3, "Web", "api")
	upstreamtest.Eventually(t, "catalog ready", func() bool { ok, _ := m.CatalogReady(); return ok })
	if names := m.ServiceNames(); !slices.Equal(names, []string{"api", "web"}) {
		t.Errorf("ServiceNames = %q, want [api web]", names)
	}
	if ok, err := m.ServiceExists("db"); ok || err != nil {
		t.Errorf("ServiceExists(db) = %v, %v; want false, nil", ok, err)
	}

	// Consul failing again keeps the last good answer.
	fc.SetFailing(upstreamtest.CatalogPath, true)
	before := len(fc.IndexesSent(upstreamtest.CatalogPath))
	upstreamtest.Eventually(t, "more failed queries", func() bool { return len(fc.IndexesSent(upstreamtest.CatalogPath)) >= before+3 })
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("ServiceExists(web) during an outage = %v, %v; want the last answer", ok, err)
	}
	if ok, _ := m.CatalogReady(); !ok {
		t.Error("CatalogReady = false during an outage after a good answer")
	}
}

func TestHealthKeepsLastGoodSetThroughErrorsAndWarnsOnce(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 4, upstreamtest.Instance(t, "web", "a", "10.0.0.1:80"), upstreamtest.Instance(t, "web", "b", "10.0.0.2:80"))
	logs := &upstreamtest.LevelCounter{}
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) { c.Logger = slog.New(logs) })
	m.Watch("web")
	upstreamtest.Eventually(t, "two endpoints", func() bool { return len(m.Endpoints("web")) == 2 })

	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	before := len(fc.IndexesSent(upstreamtest.HealthPath("web")))
	upstreamtest.Eventually(t, "several failed queries", func() bool { return len(fc.IndexesSent(upstreamtest.HealthPath("web"))) >= before+5 })
	if got := m.Endpoints("web"); len(got) != 2 {
		t.Errorf("endpoints during errors = %v, want the last good two", got)
	}
	if got := logs.Count(slog.LevelWarn); got != 1 {
		t.Errorf("warnings in one failure streak = %d, want 1", got)
	}

	fc.SetHealth("web", 9, upstreamtest.Instance(t, "web", "c", "10.0.0.3:8080"))
	upstreamtest.Eventually(t, "the new set", func() bool {
		got := m.Endpoints("web")
		return len(got) == 1 && got[0].Addr == "10.0.0.3:8080" && got[0].ID == "c"
	})

	// A new streak warns again.
	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	upstreamtest.Eventually(t, "a second warning", func() bool { return logs.Count(slog.LevelWarn) == 2 })
}

func TestWatchBeforeRunStartsWithRun(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 2, upstreamtest.Instance(t, "web", "a", "10.0.0.1:80"))
	m, err := upstream.New(upstream.Config{Consul: fc.Client(t), Logger: upstreamtest.Logger(t)})
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
	upstreamtest.Eventually(t, "the endpoint", func() bool { return len(m.Endpoints("WEB")) == 1 })
	if got := m.Endpoints("db"); got != nil {
		t.Errorf("endpoints of an unwatched service = %v, want nil", got)
	}
}
