package upstream

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
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
