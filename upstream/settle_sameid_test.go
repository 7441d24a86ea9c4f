package upstream_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// defaultIDInstance is an instance of "web" registered on node with
// Consul's default service ID, the service name: the same ID on every node.
func defaultIDInstance(t *testing.T, node, addr string) *api.ServiceEntry {
	e := upstreamtest.Instance(t, "web", "web", addr)
	e.Node.Node = node
	return e
}

// Two hosts register "web" with the default ID; n1's agent restarts and
// its instance's check is reset. Settling must keep n1's instance (and
// only it) by node and ID, so both still share the traffic.
func TestSettleKeysInstancesByNodeAndID(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	fc, m, front := webMesh(t, func(c *upstream.Config) { c.SettleTime = time.Minute },
		defaultIDInstance(t, "n1", upstreamtest.AddrOf(a)), defaultIDInstance(t, "n2", upstreamtest.AddrOf(b)))
	c := upstreamtest.Client(front)
	upstreamtest.Do(t, c, http.MethodGet, "")
	upstreamtest.Eventually(t, "both passing", func() bool { return len(m.Endpoints("web")) == 2 })
	fc.SetHealth("web", 8, upstreamtest.WithResetCheck(defaultIDInstance(t, "n1", upstreamtest.AddrOf(a))),
		defaultIDInstance(t, "n2", upstreamtest.AddrOf(b)))
	upstreamtest.Eventually(t, "a's check reset", func() bool { return len(m.Endpoints("web")) == 1 })
	counts := map[string]int{}
	for range 10 {
		_, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
		counts[h.Get("X-Instance")]++
	}
	if counts["a"] != 5 || counts["b"] != 5 {
		t.Errorf("while a's check has not run: %v, want both", counts)
	}
}
