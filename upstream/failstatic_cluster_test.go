package upstream_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs/certstest"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// A client agent cut off from its servers may leave the catalog's
// blocking query waiting while a service's query fails: that is an outage
// too, which Status and the log name at once, with the query and error.
func TestServiceWatchFailureIsFailStatic(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	logs := &certstest.LogBuffer{}
	fc, m, front := webMesh(t, func(c *upstream.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.PingEvery = time.Hour // the catalog's blocking query alone answers nothing
	}, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
		t.Fatalf("before the outage: %d", status)
	}
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	fc.SetHolding(upstreamtest.CatalogPath, true)
	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	upstreamtest.Eventually(t, "fail-static in Status", func() bool {
		return statusHas(m, "fail-static: consul unreachable for") && statusHas(m, `health of "web"`) && statusHas(m, "500")
	})
	if !strings.Contains(logs.String(), `level=WARN msg="consul unreachable: fail-static`) || !strings.Contains(logs.String(), `query="health of \"web\""`) {
		t.Errorf("log without the outage warning naming the query:\n%s", logs.String())
	}
	if st := m.ConsulState(); !st.FailStatic {
		t.Errorf("ConsulState = %+v, want fail-static", st)
	}
	if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("during the outage: %d from %q, want the last good instance", status, h.Get("X-Instance"))
	}
	fc.SetFailing(upstreamtest.HealthPath("web"), false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
	if !strings.Contains(logs.String(), "consul answers every query again: leaving fail-static") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}

// The settle time is for a Consul that lost its state. A failed query (a
// 500 during a leader election, an outage of a partition) loses nothing:
// an instance that Consul reports critical, by a check that has run, gets
// no traffic from the first answer that says so.
func TestNoSettleWithoutEvidenceOfLostState(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	for _, tc := range []struct {
		name  string
		index uint64 // of the answer after the failure (the one before is 7)
		fail  func(*upstreamtest.FakeConsul, *upstream.Mesh)
	}{
		{"outage, index moves on", 20, func(fc *upstreamtest.FakeConsul, m *upstream.Mesh) {
			failConsul(fc, true)
			upstreamtest.Eventually(t, "the outage noticed", func() bool { return statusHas(m, "fail-static") })
		}},
		{"one failed query", 8, func(fc *upstreamtest.FakeConsul, m *upstream.Mesh) {
			fc.SetFailing(upstreamtest.HealthPath("web"), true)
			upstreamtest.Eventually(t, "the failure noticed", func() bool { return statusHas(m, "fail-static") })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc, m, front := webMesh(t, func(c *upstream.Config) { c.SettleTime = time.Minute },
				upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
			c := upstreamtest.Client(front)
			upstreamtest.Do(t, c, http.MethodGet, "")
			upstreamtest.Eventually(t, "both passing", func() bool { return len(m.Endpoints("web")) == 2 })
			// Status reports fail-static only once the catalog answered:
			// an outage before that is no fail-static yet.
			upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
			tc.fail(fc, m)
			fc.SetHealth("web", tc.index, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)),
				upstreamtest.WithStatus(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)), api.HealthCritical))
			failConsul(fc, false)
			upstreamtest.Eventually(t, "b critical", func() bool { return len(m.Endpoints("web")) == 1 })
			for i := range 10 {
				if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
					t.Fatalf("request %d after the outage: %d from %q, want a only", i, status, h.Get("X-Instance"))
				}
			}
		})
	}
}

// When Consul did reset the checks (a restarted agent registers them
// again, critical and without output until they run), the instances that
// passed before keep their traffic; each leaves as soon as its check has
// run and failed, without waiting for the rest of the settle time.
func TestSettleEndsWhenTheCheckRuns(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.SettleTime = time.Minute },
		upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	c := upstreamtest.Client(front)
	upstreamtest.Do(t, c, http.MethodGet, "")
	upstreamtest.Eventually(t, "both passing", func() bool { return len(m.Endpoints("web")) == 2 })
	// No outage at all: another host's agent restarted.
	fc.SetHealth("web", 8, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)),
		upstreamtest.WithResetCheck(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b))))
	upstreamtest.Eventually(t, "b's check reset", func() bool { return len(m.Endpoints("web")) == 1 })
	counts := map[string]int{}
	for range 10 {
		_, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["a"] != 5 || counts["b"] != 5 {
		t.Errorf("while b's check has not run: %v, want both", counts)
	}
	fc.SetHealth("web", 9, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)),
		upstreamtest.WithStatus(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)), api.HealthCritical))
	upstreamtest.Eventually(t, "b out once its check ran", func() bool {
		for range 4 {
			if _, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); h.Get("X-Instance") != "a" {
				return false
			}
		}
		return true
	})
}

// A token without service:read (or node:read) gets no 403 from Consul,
// only an answer without the instances it may not see: Status and the log
// name the missing permission.
func TestACLFilteredAnswerNamesThePermission(t *testing.T) {
	logs := &certstest.LogBuffer{}
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	fc.Set(upstreamtest.HealthPath("web"), upstreamtest.FakeAnswer{Index: 9, Body: []*api.ServiceEntry{}, FilteredByACLs: true})
	status, _, _ := upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	if status != http.StatusServiceUnavailable {
		t.Errorf("no visible instance: %d, want 503", status)
	}
	want := `health of "web": consul's ACLs hide instances: meshlet's token (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE) lacks service:read on "web" or node:read`
	upstreamtest.Eventually(t, "the permission in Status", func() bool { return statusHas(m, want) })
	if !strings.Contains(logs.String(), `level=WARN msg="consul's ACLs hide part of the answer`) {
		t.Errorf("no warning:\n%s", logs.String())
	}
	fc.SetHealth("web", 10)
	upstreamtest.Eventually(t, "Status clear once the token may read", func() bool { return len(m.Status()) == 0 })
}

// A client agent cut off from its servers answers the liveness check at
// once with a 500, while the blocking queries it forwarded wait on: that
// is an outage too, not an agent that merely has nothing new to say.
func TestLivenessCheckFailingIsFailStatic(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
		t.Fatalf("before the partition: %d", status)
	}
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	fc.SetHolding(upstreamtest.CatalogPath, true)
	fc.SetHolding(upstreamtest.HealthPath("web"), true)
	fc.SetFailing(upstreamtest.LeaderPath, true)
	upstreamtest.Eventually(t, "fail-static in Status", func() bool {
		return statusHas(m, "fail-static: consul unreachable for") && statusHas(m, "the agent fails its liveness check")
	})
	if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
		t.Errorf("during the partition: %d from %q, want the last good instance", status, h.Get("X-Instance"))
	}
	fc.SetFailing(upstreamtest.LeaderPath, false)
	fc.SetHolding(upstreamtest.CatalogPath, false)
	fc.SetHolding(upstreamtest.HealthPath("web"), false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
}

// With --consul-query cached a service's instances come from the agent's
// cache, which a client agent cut off from its servers keeps answering
// from, at once and without an error, whenever its cache changes or a
// query restarts. Those answers must neither keep the liveness check from
// asking nor end the outage: the partition is fail-static within PingEvery
// and CallTimeout, named in Status, and ends when the servers answer
// again. (The catalog is never asked ?cached: querymode.go.)
func TestCachedHealthDoesNotHideAPartition(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	logs := &certstest.LogBuffer{}
	fc, m, front := webMesh(t, func(c *upstream.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.QueryMode = upstream.QueryCached   // the instances from the agent's cache
		c.PingEvery = 200 * time.Millisecond // ten cached answers between two checks
		c.CallTimeout = time.Minute          // the catalog's held query does not fail during the test
	}, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	c := upstreamtest.Client(front)
	if status, _, _ := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
		t.Fatalf("before the partition: %d", status)
	}
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	done := make(chan struct{})
	churned := make(chan struct{})
	go func() { // the cache answers the same instances again and again
		defer close(churned)
		for i := uint64(100); ; i++ {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				fc.SetHealth("web", i, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
			}
		}
	}()
	defer func() { close(done); <-churned }()
	fc.SetHolding(upstreamtest.CatalogPath, true) // a plain blocking query waits
	fc.SetFailing(upstreamtest.LeaderPath, true)
	// The catalog's plain query fails with the liveness check; the cached
	// answers of the instances must fail too: taken as answers, they would
	// tell the liveness check that Consul lives, and end the outage.
	cachedFailure := `query="health of \"web\"" err="asking consul for the instances of \"web\": the consul agent answers only from its cache: it cannot reach its servers`
	upstreamtest.Eventually(t, "fail-static in Status, cached answers failing", func() bool {
		return statusHas(m, "fail-static: consul unreachable for") && strings.Contains(logs.String(), cachedFailure)
	})
	for range 10 {
		if !statusHas(m, "fail-static") {
			t.Fatalf("fail-static ended during the partition: %q", m.Status())
		}
		if status, _, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK || h.Get("X-Instance") != "a" {
			t.Fatalf("during the partition: %d from %q, want the last good instance", status, h.Get("X-Instance"))
		}
		time.Sleep(30 * time.Millisecond)
	}
	fc.SetFailing(upstreamtest.LeaderPath, false)
	fc.SetHolding(upstreamtest.CatalogPath, false)
	upstreamtest.Eventually(t, "Status back to normal", func() bool { return len(m.Status()) == 0 })
}
