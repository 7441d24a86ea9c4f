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

// testSniffTimeout is long enough that a loaded machine never turns an
// app's late first bytes into raw TCP; tests of server-first protocols
// set their own (webMeshSniff).
const testSniffTimeout = 2 * time.Second

// webMesh serves service "web" with the given instances, and returns the
// front the app connects to.
func webMesh(t testing.TB, tweak func(*upstream.Config), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, testMesh, *upstreamtest.Front) {
	t.Helper()
	return webMeshSniff(t, testSniffTimeout, tweak, instances...)
}

// webMeshSniff is webMesh with the given sniff timeout.
func webMeshSniff(t testing.TB, sniff time.Duration, tweak func(*upstream.Config), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, testMesh, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	m := upstreamtest.NewMesh(t, fc, tweak)
	tm, front := serveSniff(t, m, sniff)
	return fc, tm, front
}

// serve starts a dispatcher for m, which the test's end shuts down, and
// a front whose connections it serves for service "web".
func serve(t testing.TB, m *upstream.Mesh) (testMesh, *upstreamtest.Front) {
	t.Helper()
	return serveSniff(t, m, testSniffTimeout)
}

func serveSniff(t testing.TB, m *upstream.Mesh, sniff time.Duration) (testMesh, *upstreamtest.Front) {
	t.Helper()
	d, err := New(m, Config{SniffTimeout: sniff})
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
