package upstream_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/outbound"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// The tests of package upstream_test drive the core through the whole
// outbound path (upstream/outbound and its front-ends), as the agent does.

// webMesh serves service "web" with the given instances, and returns the
// front the app connects to.
func webMesh(t testing.TB, tweak func(*upstream.Config), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, *upstream.Mesh, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	m := upstreamtest.NewMesh(t, fc, tweak)
	return fc, m, outboundFront(t, m)
}

// outboundFront is a front whose connections the outbound path of m
// serves for service "web", until the test ends.
func outboundFront(t testing.TB, m *upstream.Mesh) *upstreamtest.Front {
	t.Helper()
	return outboundFrontFor(t, m, "web", "web.local")
}

// outboundFrontFor is a front whose connections go to the target name
// (a service or a subset) under the Host host.
func outboundFrontFor(t testing.TB, m *upstream.Mesh, name, host string) *upstreamtest.Front {
	t.Helper()
	d, err := outbound.New(m, outbound.Config{SniffTimeout: 2 * time.Second}) // never raw TCP on a loaded machine
	if err != nil {
		t.Fatalf("outbound.New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	return upstreamtest.Serve(t, func(ctx context.Context, c net.Conn) { d.ServeConn(ctx, c, name, host) })
}

// serveWeb is a front whose connections d serves for service "web".
func serveWeb(t testing.TB, d *outbound.Dispatcher) *upstreamtest.Front {
	return upstreamtest.Serve(t, func(ctx context.Context, c net.Conn) {
		d.ServeConn(ctx, c, "web", "web.local")
	})
}
