package upstream_test

import (
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// SRV answers give Consul's port of the app (README), not its Connect
// sidecar's, also when the instance is reached over mTLS.
func TestPortsGiveAppPortUnderMTLS(t *testing.T) {
	k := newMTLSKit(t)
	a := k.sidecar(t, "web", "a")
	app := upstreamtest.DeadAddr(t)
	_, m, _ := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), nil,
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", app)}, sidecarEntry(t, "a", a.addr))
	m.Watch("web")
	upstreamtest.Eventually(t, "mTLS", func() bool { e := m.Endpoints("web"); return len(e) == 1 && e[0].MTLS })
	_, p, _ := net.SplitHostPort(app)
	want, _ := strconv.Atoi(p)
	if got := m.Ports(context.Background(), "web"); len(got) != 1 || int(got[0]) != want {
		t.Errorf("SRV ports %v, want Consul's port of the app %d (sidecar %s)", got, want, a.addr)
	}
}
