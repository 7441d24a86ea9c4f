package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// onDemandMesh is a mesh whose catalog is asked on demand, at most every
// 200 ms, with "web" in the catalog; it waits for the first answer.
func onDemandMesh(t *testing.T, tweak func(*upstream.Config)) (*upstreamtest.FakeConsul, *upstream.Mesh) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		c.Catalog = upstream.CatalogOnDemand
		c.CatalogRefreshEvery = 200 * time.Millisecond
		if tweak != nil {
			tweak(c)
		}
	})
	upstreamtest.Eventually(t, "the catalog's first answer", func() bool { ok, _ := m.CatalogReady(); return ok })
	return fc, m
}

// exists asks ServiceExists or SubsetExists ("tag.service") as the DNS
// server does: when the name is not known yet, it waits for the catalog
// and asks again.
func exists(t *testing.T, m *upstream.Mesh, name string) bool {
	t.Helper()
	ask := func() (bool, error) {
		if tag, service, ok := strings.Cut(name, "."); ok {
			return m.SubsetExists(tag, service)
		}
		return m.ServiceExists(name)
	}
	ok, err := ask()
	if errors.Is(err, upstream.ErrNotKnownYet) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.AwaitName(ctx, name); err != nil {
			t.Fatalf("AwaitName(%q): %v", name, err)
		}
		ok, err = ask()
	}
	if err != nil {
		t.Fatalf("exists(%q): %v", name, err)
	}
	return ok
}

// The catalog is asked once at start; a change elsewhere in the cluster
// costs nothing; a name registered later is found the first time it is
// asked for; a name that does not exist is denied by an answer asked after
// it, and that denial is trusted for CatalogRefreshEvery only.
func TestOnDemandCatalogAsksOnlyForUnknownNames(t *testing.T) {
	fc, m := onDemandMesh(t, nil)
	sent := func() int { return len(fc.IndexesSent(upstreamtest.CatalogPath)) }
	if !exists(t, m, "web") || sent() != 1 {
		t.Fatalf("web: exists %v after %d catalog queries, want true after 1", exists(t, m, "web"), sent())
	}
	for i := range 5 { // registrations elsewhere: nobody asks
		fc.SetCatalog(uint64(10+i), "web", fmt.Sprintf("other-%d", i))
	}
	time.Sleep(300 * time.Millisecond)
	if n := sent(); n != 1 {
		t.Fatalf("%d catalog queries after changes nobody asked about, want 1 (the first)", n)
	}
	if !exists(t, m, "other-4") {
		t.Fatal("other-4, registered after the first answer: not found")
	}
	if n := sent(); n != 2 {
		t.Fatalf("%d catalog queries, want 2", n)
	}
	if exists(t, m, "nope") {
		t.Fatal("nope: exists")
	}
	// Denied by an answer asked after it: denied at once while that
	// answer is recent, whatever the flood of lookups.
	before := sent()
	for range 1000 {
		if ok, err := m.ServiceExists("nope"); ok || err != nil {
			t.Fatalf("nope right after its denial: %v, %v", ok, err)
		}
	}
	for i := range 100 { // unknown names: at most 4 queries per 200 ms
		_, _ = m.ServiceExists(fmt.Sprintf("random-%d", i))
	}
	time.Sleep(150 * time.Millisecond)
	if n := sent() - before; n > 4 {
		t.Errorf("%d catalog queries for 1,000 lookups of a denied name and 100 unknown ones within 150 ms, want at most 4", n)
	} else {
		t.Logf("%d catalog queries for 1,000 lookups of a denied name and 100 unknown ones within 150 ms", n)
	}
	// A second of new unknown names, one a millisecond: at most 4
	// questions per CatalogRefreshEvery (200 ms here).
	before = sent()
	for i, end := 0, time.Now().Add(time.Second); time.Now().Before(end); i++ {
		_, _ = m.ServiceExists(fmt.Sprintf("flood-%d", i))
		time.Sleep(time.Millisecond)
	}
	if n := sent() - before; n > 4*6 {
		t.Errorf("%d catalog queries in a second of unknown names, want at most 24", n)
	} else {
		t.Logf("%d catalog queries in a second of unknown names", n)
	}
	time.Sleep(250 * time.Millisecond)
	// Registered after its denial: found once the denial is old.
	fc.SetCatalog(30, "web", "other-4", "nope")
	time.Sleep(250 * time.Millisecond)
	if !exists(t, m, "nope") {
		t.Error("nope, registered after its denial and asked again later: not found")
	}
}

// A tag subset the last answer lacks is asked for like a name.
func TestOnDemandCatalogFindsNewTags(t *testing.T) {
	fc, m := onDemandMesh(t, nil)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v1"}}})
	time.Sleep(250 * time.Millisecond)
	if !exists(t, m, "v1.web") || exists(t, m, "v2.web") {
		t.Fatal("v1.web should exist and v2.web not")
	}
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 3, Body: map[string][]string{"web": {"v1", "v2"}}})
	time.Sleep(250 * time.Millisecond)
	if !exists(t, m, "v2.web") {
		t.Error("v2.web, tagged after the first answers: not found")
	}
}

// With no watch to fail, the liveness check stands for the catalog: a
// Consul that stops answering (the check fails, the catalog's question
// hangs) is fail-static in Status at once, and its return ends it.
func TestOnDemandCatalogOutageFromTheLivenessCheck(t *testing.T) {
	fc, m := onDemandMesh(t, func(c *upstream.Config) {
		c.PingEvery = 100 * time.Millisecond
		c.CallTimeout = time.Minute // the hung question does not fail during the test
	})
	fc.SetHolding(upstreamtest.CatalogPath, true)
	fc.SetFailing(upstreamtest.LeaderPath, true)
	upstreamtest.Eventually(t, "fail-static in Status", func() bool {
		return statusHas(m, "fail-static: consul unreachable for") && statusHas(m, "catalog services: consul does not answer: the agent fails its liveness check")
	})
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("web during the outage: %v, %v", ok, err)
	}
	fc.SetFailing(upstreamtest.LeaderPath, false)
	fc.SetHolding(upstreamtest.CatalogPath, false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
}

// A watched service registered after the catalog's last answer is known
// from its own watch, without asking the catalog.
func TestOnDemandCatalogKnowsWatchedServices(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc, m := onDemandMesh(t, nil)
	fc.SetHealth("api", 3, upstreamtest.Instance(t, "api", "a", upstreamtest.AddrOf(a)))
	m.Watch("api")
	upstreamtest.Eventually(t, "api's instances", func() bool { return len(m.Endpoints("api")) == 1 })
	before := len(fc.IndexesSent(upstreamtest.CatalogPath))
	if ok, err := m.ServiceExists("api"); !ok || err != nil {
		t.Fatalf("api: %v, %v", ok, err)
	}
	if n := len(fc.IndexesSent(upstreamtest.CatalogPath)); n != before {
		t.Errorf("the catalog was asked %d times for a watched service", n-before)
	}
}

// A question that fails begins an outage, and the catalog is asked again
// with backoff until it answers, which ends it: no lookup is needed.
func TestOnDemandCatalogOutageEndsWhenItAnswers(t *testing.T) {
	fc, m := onDemandMesh(t, func(c *upstream.Config) { c.PingEvery = time.Hour })
	fc.SetFailing(upstreamtest.CatalogPath, true)
	if _, err := m.ServiceExists("new"); !errors.Is(err, upstream.ErrNotKnownYet) {
		t.Fatalf("new: %v, want ErrNotKnownYet", err)
	}
	upstreamtest.Eventually(t, "fail-static in Status", func() bool { return statusHas(m, "fail-static: consul unreachable for") })
	if exists(t, m, "new") || !exists(t, m, "web") {
		t.Error("during the outage: want the last answer's names")
	}
	fc.SetFailing(upstreamtest.CatalogPath, false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
}

// A watched service that leaves is denied once the catalog, asked after
// its watch saw it empty, no longer lists it; back, it is known from its
// watch at once.
func TestOnDemandCatalogDeniesAServiceThatLeft(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc, m := onDemandMesh(t, nil)
	fc.SetHealth("web", 3, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	m.Watch("web")
	upstreamtest.Eventually(t, "web's instances", func() bool { return len(m.Endpoints("web")) == 1 })
	fc.SetHealth("web", 4)
	fc.SetCatalog(4, "other")
	upstreamtest.Eventually(t, "web's watch to see it leave", func() bool { return len(m.Endpoints("web")) == 0 })
	if exists(t, m, "web") {
		t.Fatal("web, deregistered: still exists")
	}
	fc.SetHealth("web", 5, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	upstreamtest.Eventually(t, "web back", func() bool { return len(m.Endpoints("web")) == 1 })
	if ok, err := m.ServiceExists("web"); !ok || err != nil {
		t.Errorf("web, registered again: %v, %v", ok, err)
	}
}

// RefreshCatalog asks the catalog again and returns with its answer: how
// the agent maps the VIP an earlier run handed out for a service
// registered since the last answer.
func TestOnDemandRefreshCatalog(t *testing.T) {
	fc, m := onDemandMesh(t, nil)
	fc.SetCatalog(2, "web", "late")
	if slices.Contains(m.ServiceNames(), "late") {
		t.Fatal("late listed before any question")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.RefreshCatalog(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(m.ServiceNames(), "late") {
		t.Errorf("after RefreshCatalog: %v, want late listed", m.ServiceNames())
	}
}
