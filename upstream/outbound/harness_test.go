package outbound

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// testMesh is a running core with its dispatcher, as the agent has them.
type testMesh struct {
	*upstream.Mesh
	*Dispatcher
}

// webMesh serves service "web" with the given instances, and returns the
// front the app connects to.
func webMesh(t testing.TB, tweak func(*upstream.Config), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, testMesh, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	m := upstreamtest.NewMesh(t, fc, tweak)
	tm, front := serve(t, m)
	return fc, tm, front
}

// serve starts a dispatcher for m, which the test's end shuts down, and
// a front whose connections it serves for service "web".
func serve(t testing.TB, m *upstream.Mesh) (testMesh, *upstreamtest.Front) {
	t.Helper()
	d, err := New(m, Config{SniffTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	front := upstreamtest.Serve(t, func(ctx context.Context, c net.Conn) {
		d.ServeConn(ctx, c, "web", "web.local")
	})
	return testMesh{m, d}, front
}

// oneInstanceMesh serves "web" with one instance at addr, with meta.
func oneInstanceMesh(t *testing.T, addr string, meta ...string) *upstreamtest.Front {
	t.Helper()
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", addr), meta...))
	return front
}
