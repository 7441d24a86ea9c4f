package dns

import (
	"sync/atomic"
	"testing"

	mdns "github.com/miekg/dns"
)

// countingMetrics counts with atomics, as the agent's Prometheus
// counters do.
type countingMetrics struct {
	kinds  [4]atomic.Int64
	failed atomic.Int64
}

func (c *countingMetrics) Query(k QueryKind) { c.kinds[k].Add(1) }
func (c *countingMetrics) ForwardFailed()    { c.failed.Add(1) }

func (c *countingMetrics) snapshot() [5]int64 {
	return [5]int64{c.kinds[QueryMesh].Load(), c.kinds[QueryNXDomain].Load(), c.kinds[QueryForwarded].Load(),
		c.kinds[QueryServFail].Load(), c.failed.Load()}
}

// TestMetricsCountEachQueryOnce sends each kind of query over UDP (fast
// and general paths) and TCP and checks that each is counted once, under
// its kind.
func TestMetricsCountEachQueryOnce(t *testing.T) {
	up := startUpstream(t, exampleUpstream)
	type counts = [5]int64 // mesh, nxdomain, forwarded, servfail, forward failures
	for _, tc := range []struct {
		name      string
		q         *mdns.Msg
		upstreams []string
		want      counts
	}{
		{"mesh A (fast path)", question("web.local.", mdns.TypeA), nil, counts{1, 0, 0, 0, 0}},
		{"mesh AAAA (empty answer)", question("web.local.", mdns.TypeAAAA), nil, counts{1, 0, 0, 0, 0}},
		{"mesh with EDNS (general path)", question("web.local.", mdns.TypeA).SetEdns0(1232, true), nil, counts{1, 0, 0, 0, 0}},
		{"zone apex", question("local.", mdns.TypeSOA), nil, counts{1, 0, 0, 0, 0}},
		{"unknown service", question("nope.local.", mdns.TypeA), nil, counts{0, 1, 0, 0, 0}},
		{"name under a service", question("a.web.local.", mdns.TypeA), nil, counts{0, 1, 0, 0, 0}},
		{"lookup fails", question("broken.local.", mdns.TypeA), nil, counts{0, 0, 0, 1, 0}},
		{"forwarded", question("example.org.", mdns.TypeA), nil, counts{0, 0, 1, 0, 0}},
		{"forwarding fails", question("example.org.", mdns.TypeA), []string{"dead"}, counts{0, 0, 1, 0, 1}},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tc.name+"/"+network, func(t *testing.T) {
				ups := []string{up.addr}
				if tc.upstreams != nil {
					ups = []string{deadAddr(t)}
				}
				m := &countingMetrics{}
				cfg := testConfig(newFakeServices(), ups...)
				cfg.ForwardTimeout = 200e6
				cfg.Metrics = m
				s := startServer(t, cfg)
				addr := s.UDPAddr().String()
				if network == "tcp" {
					addr = s.TCPAddr().String()
				}
				ask(t, network, addr, tc.q)
				if got := m.snapshot(); got != tc.want {
					t.Errorf("counts (mesh, nxdomain, forwarded, servfail, forward failures) = %v, want %v", got, tc.want)
				}
			})
		}
	}
}
