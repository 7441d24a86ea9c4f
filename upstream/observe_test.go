package upstream_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// ConsulState says how fresh the view of Consul is: fresh while it
// answers, fail-static with a growing age and counted errors while it
// does not, fresh again after.
func TestConsulState(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	upstreamtest.Do(t, upstreamtest.Client(front), http.MethodGet, "")
	upstreamtest.Eventually(t, "the catalog", func() bool { ok, _ := m.CatalogReady(); return ok })
	if st := m.ConsulState(); st != (upstream.ConsulState{}) {
		t.Errorf("while Consul answers: %+v, want zero", st)
	}
	failConsul(fc, true)
	upstreamtest.Eventually(t, "fail-static", func() bool { return m.ConsulState().FailStatic })
	time.Sleep(20 * time.Millisecond)
	st := m.ConsulState()
	if st.SinceAnswer < 20*time.Millisecond || st.WatchErrors == 0 {
		t.Errorf("during the outage: %+v, want an age of 20ms or more and watch errors", st)
	}
	failConsul(fc, false)
	upstreamtest.Eventually(t, "the end of fail-static", func() bool { return !m.ConsulState().FailStatic })
	if st2 := m.ConsulState(); st2.SinceAnswer != 0 || st2.WatchErrors < st.WatchErrors {
		t.Errorf("after the outage: %+v", st2)
	}
}

// Instances shows each routed instance with its ejection and requests in
// flight.
func TestInstancesShowEjection(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	_, m, front := webMesh(t, nil,
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)), "meshlet-eject-after", "1", "meshlet-eject-time", "1m"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), "meshlet-eject-after", "1", "meshlet-eject-time", "1m"))
	c := upstreamtest.Client(front)
	for range 2 {
		upstreamtest.Do(t, c, http.MethodGet, "")
	}
	got := map[string]upstream.InstanceState{}
	for _, in := range m.Instances("web") {
		got[in.ID] = in
	}
	if len(got) != 2 {
		t.Fatalf("instances %v, want a and dead", got)
	}
	if d := got["dead"].EjectedFor; d < 50*time.Second || d > time.Minute {
		t.Errorf("dead instance ejected for %v, want about 1m", d)
	}
	if got["a"].EjectedFor != 0 {
		t.Errorf("instance a: %+v, want not ejected", got["a"])
	}
	// Its last request's in-flight count ends just after the answer.
	upstreamtest.Eventually(t, "no request in flight", func() bool {
		for _, in := range m.Instances("web") {
			if in.InFlight != 0 {
				return false
			}
		}
		return true
	})
	if m.Instances("nope") != nil {
		t.Error("Instances of an unwatched service")
	}
}
