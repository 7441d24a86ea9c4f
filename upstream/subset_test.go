package upstream_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// tagged is a passing instance of web with tags.
func tagged(t *testing.T, id, addr string, tags ...string) *api.ServiceEntry {
	e := upstreamtest.Instance(t, "web", id, addr)
	e.Service.Tags = tags
	return e
}

func ids(eps []upstream.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.ID)
	}
	slices.Sort(out)
	return out
}

func TestSubsetRoutesToTaggedInstancesOnly(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 1, Body: map[string][]string{"web": {"v1", "V2"}, "db": {}}})
	// The balancing comes from the instances outside the subset (the
	// majority's meta): the subset routes with its service's policy.
	fc.SetHealth("web", 1,
		upstreamtest.WithMeta(tagged(t, "a", "127.0.0.1:8001", "v1"), upstream.MetaPrefix+"balance", "least-request"),
		upstreamtest.WithMeta(tagged(t, "b", "127.0.0.1:8002", "v1"), upstream.MetaPrefix+"balance", "least-request"),
		tagged(t, "c", "127.0.0.1:8003", "V2", "canary"),
	)
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		o, err := upstream.ParseOverrides("web:retries=5")
		if err != nil {
			t.Fatal(err)
		}
		c.Overrides = o
	})
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })

	for _, tc := range []struct {
		tag, service string
		want         bool
	}{{"v2", "web", true}, {"V2", "WEB", true}, {"v1", "web", true}, {"canary", "web", false}, {"v9", "web", false}, {"v2", "nope", false}, {"v2", "db", false}} {
		if got, err := m.SubsetExists(tc.tag, tc.service); got != tc.want || err != nil {
			t.Errorf("SubsetExists(%q, %q) = %v, %v; want %v", tc.tag, tc.service, got, err, tc.want)
		}
	}

	name := upstream.SubsetName("V2", "Web")
	target := m.Target(name, "v2.web.local")
	if target.Service() != "v2.web" || target.ConsulService() != "web" {
		t.Errorf("subset target: Service %q, ConsulService %q; want v2.web, web", target.Service(), target.ConsulService())
	}
	upstreamtest.Eventually(t, "the subset's instances", func() bool { return slices.Equal(ids(m.Endpoints(name)), []string{"c"}) })
	for range 10 {
		var p upstream.Pick
		if code, msg, ok := m.Choose(context.Background(), target, &p, nil); !ok {
			t.Fatalf("Choose: %s %s", code, msg)
		}
		if id := p.Endpoint().ID; id != "c" {
			t.Fatalf("the subset v2 routed to %q", id)
		}
	}
	web, _ := m.PolicyOf("web")
	sub, ok := m.PolicyOf(name)
	if !ok || sub != web || sub.Balance != upstream.BalanceLeastRequest || sub.Retries != 5 {
		t.Errorf("subset policy %v (%v), want the service's %v", sub, ok, web)
	}
	if got := m.Ports(context.Background(), name); !slices.Equal(got, []uint16{8003}) {
		t.Errorf("Ports(v2.web) = %v, want [8003]", got)
	}
	if got := m.Ports(context.Background(), "web"); !slices.Equal(got, []uint16{8001, 8002, 8003}) {
		t.Errorf("Ports(web) = %v, want [8001 8002 8003]", got)
	}
	if names := m.SubsetNames(); !slices.Equal(names, []string{"v1.web", "v2.web"}) {
		t.Errorf("SubsetNames = %q", names)
	}

	// The v2 instance fails its check, then comes back: the subset
	// follows its service's one watch.
	fc.SetHealth("web", 2,
		tagged(t, "a", "127.0.0.1:8001", "v1"),
		tagged(t, "b", "127.0.0.1:8002", "v1"),
		upstreamtest.WithStatus(tagged(t, "c", "127.0.0.1:8003", "v2"), api.HealthCritical),
	)
	upstreamtest.Eventually(t, "no passing v2 instance", func() bool { return len(m.Endpoints(name)) == 0 })
	var p upstream.Pick
	if code, _, ok := m.Choose(context.Background(), target, &p, nil); ok || code != upstream.ErrCodeNoInstance {
		t.Errorf("Choose with the v2 instance critical: ok %v code %q, want %q", ok, code, upstream.ErrCodeNoInstance)
	}
	if got := m.Ports(context.Background(), name); !slices.Equal(got, []uint16{8003}) {
		t.Errorf("Ports(v2.web) with no instance passing = %v, want the registered one's [8003]", got)
	}
	fc.SetHealth("web", 3,
		tagged(t, "a", "127.0.0.1:8001", "v1"),
		tagged(t, "b", "127.0.0.1:8002", "v1"),
		tagged(t, "c", "127.0.0.1:8003", "v2"),
		tagged(t, "d", "127.0.0.1:8004", "v2"),
	)
	upstreamtest.Eventually(t, "two v2 instances", func() bool { return slices.Equal(ids(m.Endpoints(name)), []string{"c", "d"}) })
	// A subset first asked for after its service's answers starts with them.
	m.Watch("v1.web")
	if got := ids(m.Endpoints("v1.web")); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("v1.web, asked for after the service's answers: %v, want [a b]", got)
	}

	if sent := fc.IndexesSent(upstreamtest.HealthPath("v2.web")); len(sent) != 0 {
		t.Errorf("the subset asked consul itself (%d queries); its service's watch should feed it", len(sent))
	}
}

// TestSubsetFailStatic: while Consul fails, a subset keeps routing on its
// last good instances, as its service does.
func TestSubsetFailStatic(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 1, Body: map[string][]string{"web": {"v2"}}})
	fc.SetHealth("web", 1, tagged(t, "a", "127.0.0.1:8001", "v1"), tagged(t, "c", "127.0.0.1:8003", "v2"))
	m := upstreamtest.NewMesh(t, fc, nil)
	target := m.Target("v2.web", "v2.web.local")
	upstreamtest.Eventually(t, "the subset's instances", func() bool { return len(m.Endpoints("v2.web")) == 1 })
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })

	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	fc.SetFailing(upstreamtest.CatalogPath, true)
	upstreamtest.Eventually(t, "fail-static", func() bool { return m.ConsulState().FailStatic })
	var p upstream.Pick
	if code, msg, ok := m.Choose(context.Background(), target, &p, nil); !ok || p.Endpoint().ID != "c" {
		t.Fatalf("Choose during the outage: %v %s %s", ok, code, msg)
	}
	if ok, err := m.SubsetExists("v2", "web"); !ok || err != nil {
		t.Errorf("SubsetExists during the outage = %v, %v; want true", ok, err)
	}
}

// A client pinned to an instance through its service stays on it through
// a subset that holds the instance: the cookie is the service's.
func TestSubsetSharesStickyCookies(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 1, Body: map[string][]string{"web": {"v1", "v2"}}})
	fc.SetHealth("web", 1, tagged(t, "a", "127.0.0.1:8001", "v1"), tagged(t, "b", "127.0.0.1:8002", "v2"), tagged(t, "c", "127.0.0.1:8003", "v2"))
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		o, err := upstream.ParseOverrides("web:sticky=cookie")
		if err != nil {
			t.Fatal(err)
		}
		c.Overrides = o
	})
	web, sub := m.Target("web", "web.local"), m.Target("v2.web", "v2.web.local")
	upstreamtest.Eventually(t, "the subset's instances", func() bool { return len(m.Endpoints("v2.web")) == 2 })
	var cookie string
	for range 3 { // round-robin over a, b, c until c answers
		var p upstream.Pick
		if _, msg, ok := m.Choose(context.Background(), web, &p, nil); !ok {
			t.Fatal(msg)
		}
		if p.Endpoint().ID == "c" {
			set, _ := p.PinCookie()
			cookie, _, _ = strings.Cut(set, ";")
			break
		}
	}
	if cookie == "" {
		t.Fatal("web never routed to c")
	}
	finder := func(name string, found func(upstream.StickyID) bool) {
		upstream.StickyCookies(http.Header{"Cookie": {cookie}}, name, found)
	}
	for range 5 {
		var p upstream.Pick
		if _, msg, ok := m.Choose(context.Background(), sub, &p, finder); !ok {
			t.Fatal(msg)
		}
		if p.Endpoint().ID != "c" || !p.StickyRouted() {
			t.Fatalf("v2.web with web's cookie for c went to %s (sticky %v)", p.Endpoint().ID, p.StickyRouted())
		}
	}
}

// A meshlet restarted while Consul is down resolves and routes a subset
// from the saved state, which keeps no tags: the saved instances have them.
func TestSubsetFromTheSavedState(t *testing.T) {
	dir := t.TempDir()
	start := func(fc *upstreamtest.FakeConsul) (*upstream.Mesh, func()) {
		m, err := upstream.New(upstream.Config{
			Consul: fc.Client(t), FirstAnswerTimeout: 2 * time.Second, WaitTime: 2 * time.Second,
			RetryBackoff: func(int) time.Duration { return 5 * time.Millisecond },
			Logger:       upstreamtest.Logger(t), PingEvery: 20 * time.Millisecond,
			StateDir: dir, StateID: "127.0.0.1:8500",
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		stop := func() { cancel(); <-done }
		t.Cleanup(stop)
		return m, sync.OnceFunc(stop)
	}
	fc := upstreamtest.NewFakeConsul(t)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 1, Body: map[string][]string{"web": {"v1", "v2"}}})
	fc.SetHealth("web", 1, tagged(t, "a", "127.0.0.1:8001", "v1"), tagged(t, "c", "127.0.0.1:8003", "v2"))
	m, stop := start(fc)
	m.Watch("v2.web")
	upstreamtest.Eventually(t, "the state file", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "state-127.0.0.1_8500.json"))
		return err == nil && strings.Contains(string(b), "127.0.0.1:8003")
	})
	stop()

	down := upstreamtest.NewFakeConsul(t)
	down.SetFailing(upstreamtest.CatalogPath, true)
	down.SetFailing(upstreamtest.HealthPath("web"), true)
	m2, _ := start(down)
	upstreamtest.Eventually(t, "the subset known from the saved state", func() bool {
		ok, err := m2.SubsetExists("v2", "web")
		return ok && err == nil
	})
	if ok, err := m2.SubsetExists("v9", "web"); ok || err != nil {
		t.Errorf("SubsetExists(v9) from the saved state = %v, %v; want false", ok, err)
	}
	var p upstream.Pick
	if code, msg, ok := m2.Choose(context.Background(), m2.Target("v2.web", "v2.web.local"), &p, nil); !ok || p.Endpoint().ID != "c" {
		t.Fatalf("Choose from the saved state: %v %s %s", ok, code, msg)
	}
}
