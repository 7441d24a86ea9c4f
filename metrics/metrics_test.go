package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRequestClasses(t *testing.T) {
	for _, tc := range []struct {
		status int
		class  string
	}{
		{101, "1xx"}, {200, "2xx"}, {204, "2xx"}, {302, "3xx"}, {404, "4xx"}, {499, "4xx"},
		{502, "5xx"}, {599, "5xx"}, {0, "5xx"}, {600, "5xx"}, {-1, "5xx"},
	} {
		m := New()
		s := m.Service("Web")
		s.Request(tc.status, 3*time.Millisecond)
		if got := testutil.ToFloat64(m.requests.WithLabelValues("web", tc.class)); got != 1 {
			t.Errorf("status %d: meshlet_requests_total{class=%q} = %v, want 1", tc.status, tc.class, got)
		}
		if got := testutil.CollectAndCount(m.requests); got != len(classes) {
			t.Errorf("status %d: %d request series, want %d (one per class, made at once)", tc.status, got, len(classes))
		}
	}
}

func TestServiceHandlesAreShared(t *testing.T) {
	m := New()
	if m.Service("web") != m.Service("WEB") {
		t.Fatal("Service returned two handles for one service")
	}
	m.Service("web").Retry()
	m.Service("WEB").Retry()
	if got := testutil.ToFloat64(m.retries.WithLabelValues("web")); got != 2 {
		t.Fatalf("retries = %v, want 2", got)
	}
}

func TestForgetInstanceDropsItsSeries(t *testing.T) {
	m := New()
	s := m.Service("web")
	a, b := s.Instance("web-1"), s.Instance("web-2")
	a.Attempt()
	a.Failed()
	a.Ejected()
	b.Attempt()
	for _, v := range []struct {
		name string
		n    int
	}{{"meshlet_instance_requests_total", 2}, {"meshlet_instance_failures_total", 2}, {"meshlet_instance_ejections_total", 2}} {
		if got := testutil.CollectAndCount(m.reg, v.name); got != v.n {
			t.Errorf("before: %s has %d series, want %d", v.name, got, v.n)
		}
	}
	s.ForgetInstance("web-1")
	for _, name := range []string{"meshlet_instance_requests_total", "meshlet_instance_failures_total", "meshlet_instance_ejections_total"} {
		if got := testutil.CollectAndCount(m.reg, name); got != 1 {
			t.Errorf("after: %s has %d series, want 1 (web-2's)", name, got)
		}
	}
	want := `
# HELP meshlet_instance_requests_total Attempts sent to an instance (HTTP requests and retries, raw TCP connections).
# TYPE meshlet_instance_requests_total counter
meshlet_instance_requests_total{instance_id="web-2",service="web"} 1
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "meshlet_instance_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestNilHandlesDoNothing(t *testing.T) {
	var m *Metrics
	s := m.Service("web")
	s.Request(200, time.Second)
	s.Retry()
	s.RetryRefused()
	s.StickyRouted()
	s.StickyPinned(true)
	s.TCPOpened()
	s.TCPClosed(1, 2)
	s.ForgetInstance("x")
	i := s.Instance("x")
	i.Attempt()
	i.Failed()
	i.Ejected()
	d := m.DNS()
	d.Query(DNSMesh)
	d.ForwardFailed()
}

func TestTCPAndStickyAndDNS(t *testing.T) {
	m := New()
	s := m.Service("db")
	s.TCPOpened()
	s.TCPClosed(100, 2000)
	s.StickyRouted()
	s.StickyPinned(false)
	s.StickyPinned(true)
	s.StickyPinned(true)
	s.RetryRefused()
	m.DNS().Query(DNSMesh)
	m.DNS().Query(DNSForwarded)
	m.DNS().Query(DNSForwarded)
	m.DNS().Query(DNSKind(99)) // ignored
	m.DNS().ForwardFailed()
	for _, c := range []struct {
		got  float64
		want float64
		what string
	}{
		{testutil.ToFloat64(m.tcpOpened), 1, "tcp opened"},
		{testutil.ToFloat64(m.tcpClosed), 1, "tcp closed"},
		{testutil.ToFloat64(m.tcpBytes.WithLabelValues("db", "sent")), 100, "tcp bytes sent"},
		{testutil.ToFloat64(m.tcpBytes.WithLabelValues("db", "received")), 2000, "tcp bytes received"},
		{testutil.ToFloat64(m.stickyRouted), 1, "sticky routed"},
		{testutil.ToFloat64(m.stickyPins), 1, "sticky pins"},
		{testutil.ToFloat64(m.stickyRepins), 2, "sticky repins"},
		{testutil.ToFloat64(m.retriesRefused), 1, "retries refused"},
		{testutil.ToFloat64(m.dnsQueries.WithLabelValues("mesh")), 1, "dns mesh"},
		{testutil.ToFloat64(m.dnsQueries.WithLabelValues("forwarded")), 2, "dns forwarded"},
		{testutil.ToFloat64(m.dnsQueries.WithLabelValues("nxdomain")), 0, "dns nxdomain"},
		{testutil.ToFloat64(m.dnsForwardFailures), 1, "dns forward failures"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}

func TestScrapeTimeCollectors(t *testing.T) {
	m := New()
	consul := ConsulState{}
	m.WatchConsul(func() ConsulState { return consul })
	m.WatchRegistrations(func() []Registration {
		return []Registration{{Service: "shop", Status: "critical", Registered: true}}
	})
	m.WatchServices(func() []ServiceState { return []ServiceState{{Service: "web", Passing: 3, Ejected: 1}} })
	consul = ConsulState{SinceAnswer: 31500 * time.Millisecond, FailStatic: true, WatchErrors: 7}
	want := `
# HELP meshlet_consul_fail_static 1 while meshlet routes on its last good instances because Consul does not answer (fail-static), else 0.
# TYPE meshlet_consul_fail_static gauge
meshlet_consul_fail_static 1
# HELP meshlet_consul_last_answer_age_seconds Seconds since Consul last answered meshlet's watches; 0 while it answers.
# TYPE meshlet_consul_last_answer_age_seconds gauge
meshlet_consul_last_answer_age_seconds 31.5
# HELP meshlet_consul_watch_errors_total Failed queries of meshlet's Consul watches (catalog and services).
# TYPE meshlet_consul_watch_errors_total counter
meshlet_consul_watch_errors_total 7
# HELP meshlet_instances_ejected Instances of a service ejected by passive health right now.
# TYPE meshlet_instances_ejected gauge
meshlet_instances_ejected{service="web"} 1
# HELP meshlet_instances_passing Instances of a service passing their checks in Consul (or kept by fail-static).
# TYPE meshlet_instances_passing gauge
meshlet_instances_passing{service="web"} 3
# HELP meshlet_registration_registered 1 when Consul has the app's service registered, else 0.
# TYPE meshlet_registration_registered gauge
meshlet_registration_registered{service="shop"} 1
# HELP meshlet_registration_status The check state of each service of the app that meshlet registers: 1 for its current status, 0 for the others.
# TYPE meshlet_registration_status gauge
meshlet_registration_status{service="shop",status="critical"} 1
meshlet_registration_status{service="shop",status="passing"} 0
meshlet_registration_status{service="shop",status="warning"} 0
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want),
		"meshlet_consul_fail_static", "meshlet_consul_last_answer_age_seconds", "meshlet_consul_watch_errors_total",
		"meshlet_instances_ejected", "meshlet_instances_passing",
		"meshlet_registration_registered", "meshlet_registration_status"); err != nil {
		t.Error(err)
	}
}

// TestNamesFollowConventions runs Prometheus's own linter over every
// meshlet metric, with a series of each made.
func TestNamesFollowConventions(t *testing.T) {
	m := New()
	m.WatchConsul(func() ConsulState { return ConsulState{} })
	m.WatchRegistrations(func() []Registration { return []Registration{{Service: "a", Status: "passing"}} })
	m.WatchServices(func() []ServiceState { return []ServiceState{{Service: "web"}} })
	s := m.Service("web")
	s.Instance("web-1").Attempt()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "meshlet_") {
			continue
		}
		names = append(names, name)
		for _, met := range mf.GetMetric() {
			for _, l := range met.GetLabel() {
				switch l.GetName() {
				case "service", "instance_id", "class", "kind", "direction", "status", "reason":
				default:
					t.Errorf("%s has label %q, outside the allowed set", name, l.GetName())
				}
			}
		}
	}
	problems, err := testutil.GatherAndLint(m.reg, names...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if len(names) < 20 {
		t.Errorf("only %d meshlet metrics gathered: %v", len(names), names)
	}
}

func TestLatencyBuckets(t *testing.T) {
	if n := len(LatencyBuckets); n > 12 {
		t.Fatalf("%d latency buckets, want at most 12", n)
	}
	for i := 1; i < len(LatencyBuckets); i++ {
		if LatencyBuckets[i] <= LatencyBuckets[i-1] {
			t.Fatalf("buckets not increasing at %d: %v", i, LatencyBuckets)
		}
	}
}

// TestRecordingAllocatesNothing is the hot path's promise: with the
// handles resolved, recording a request, a retry, an instance's attempt
// and failure, stickiness, a raw connection and a DNS query allocates
// nothing.
func TestRecordingAllocatesNothing(t *testing.T) {
	m := New()
	s := m.Service("web")
	inst := s.Instance("web-1")
	d := m.DNS()
	allocs := testing.AllocsPerRun(1000, func() {
		s.Request(200, 1500*time.Microsecond)
		s.Request(503, 20*time.Millisecond)
		s.Retry()
		s.RetryRefused()
		s.StickyRouted()
		s.StickyPinned(true)
		s.TCPOpened()
		s.TCPClosed(10, 20)
		inst.Attempt()
		inst.Failed()
		inst.Ejected()
		d.Query(DNSMesh)
		d.ForwardFailed()
	})
	if allocs != 0 {
		t.Fatalf("recording allocates %v times per run, want 0", allocs)
	}
}

func BenchmarkRequest(b *testing.B) {
	m := New()
	s := m.Service("web")
	inst := s.Instance("web-1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			inst.Attempt()
			s.Request(200, 1500*time.Microsecond)
		}
	})
}

func TestCounts(t *testing.T) {
	m := New()
	s := m.Service("web")
	s.Request(200, time.Millisecond)
	s.Request(200, time.Millisecond)
	s.Request(503, time.Millisecond)
	s.Retry()
	s.StickyPinned(true)
	s.Instance("b").Attempt()
	s.Instance("a").Failed()
	s.Instance("a").Ejected()
	c := s.Counts()
	if c.Requests != 3 || c.ByClass["2xx"] != 2 || c.ByClass["5xx"] != 1 || c.Retries != 1 || c.StickyRepins != 1 {
		t.Errorf("counts %+v", c)
	}
	ic := s.InstanceCounts()
	if len(ic) != 2 || ic[0] != (InstanceCounts{ID: "a", Failures: 1, Ejections: 1}) || ic[1] != (InstanceCounts{ID: "b", Requests: 1}) {
		t.Errorf("instance counts %+v", ic)
	}
	s.ForgetInstance("a")
	if ic := s.InstanceCounts(); len(ic) != 1 || ic[0].ID != "b" {
		t.Errorf("after forgetting a: %+v", ic)
	}
	if m.Lookup("web") != s || m.Lookup("db") != nil {
		t.Error("Lookup")
	}
}

// TestSeriesFor10Services counts the series a sidecar serves for 10
// services of 10 instances each (a histogram counts one series per bucket,
// plus _sum and _count), and keeps it within budget.
func TestSeriesFor10Services(t *testing.T) {
	m := New()
	var states []ServiceState
	for s := range 10 {
		name := fmt.Sprintf("svc-%d", s)
		svc := m.Service(name)
		for i := range 10 {
			svc.Instance(fmt.Sprintf("%s-%d", name, i)).Attempt()
		}
		states = append(states, ServiceState{Service: name, Passing: 10})
	}
	m.WatchServices(func() []ServiceState { return states })
	m.WatchConsul(func() ConsulState { return ConsulState{} })
	m.WatchRegistrations(func() []Registration { return []Registration{{Service: "app", Status: "passing", Registered: true}} })
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	meshlet, other := 0, 0
	for _, mf := range mfs {
		n := 0
		for _, met := range mf.GetMetric() {
			if h := met.GetHistogram(); h != nil {
				n += len(h.GetBucket()) + 1 + 2 // buckets, +Inf, _sum, _count
			} else {
				n++
			}
		}
		if strings.HasPrefix(mf.GetName(), "meshlet_") {
			meshlet += n
		} else {
			other += n
		}
	}
	t.Logf("10 services × 10 instances: %d meshlet series, %d go_/process_ series, %d in all", meshlet, other, meshlet+other)
	if meshlet > 700 {
		t.Errorf("%d meshlet series, over the budget of 700", meshlet)
	}
}

func TestMTLS(t *testing.T) {
	m := New()
	m.HandshakeFailed("intentions")
	m.HandshakeFailed("intentions")
	m.HandshakeFailed("something new") // counts as tls
	notAfter := time.Now().Add(time.Hour)
	hasLeaf := false
	m.WatchLeaf(func() (time.Time, bool) { return notAfter, hasLeaf })
	if n := testutil.CollectAndCount(m.reg, "meshlet_mtls_leaf_expiry_seconds"); n != 0 {
		t.Errorf("%d leaf series before a leaf, want 0", n)
	}
	hasLeaf = true
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range met.GetLabel() {
				key += " " + l.GetValue()
			}
			if c := met.GetCounter(); c != nil {
				got[key] = c.GetValue()
			} else if g := met.GetGauge(); g != nil {
				got[key] = g.GetValue()
			}
		}
	}
	if got["meshlet_mtls_handshake_failures_total intentions"] != 2 || got["meshlet_mtls_handshake_failures_total tls"] != 1 {
		t.Errorf("failures %v", got)
	}
	if left := got["meshlet_mtls_leaf_expiry_seconds"]; left < 3590 || left > 3600 {
		t.Errorf("leaf expiry %v s, want about 3600", left)
	}
	var nilM *Metrics
	nilM.HandshakeFailed("tls")
}
