package h1

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// meshConfig is the core's Config with the forwarder's own settings, for
// tests to tweak.
type meshConfig struct {
	upstream.Config
	appCheck time.Duration
}

// webMesh serves service "web" with the given instances through the
// forwarder alone, as the dispatcher would after sniffing HTTP, and
// returns the front the app connects to. Hand-offs to net/http are closed
// and counted in handedOff: these tests send nothing the forwarder leaves
// to it (upstream/outbound tests the hand-off).
func webMesh(t testing.TB, tweak func(*meshConfig), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, *upstream.Mesh, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	var mc meshConfig
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		mc.Config = *c
		if tweak != nil {
			tweak(&mc)
		}
		*c = mc.Config
	})
	var handedOff atomic.Int64
	f := New(m, Config{
		AppCheck: mc.appCheck,
		HandOff: func(_ context.Context, conn net.Conn, _ []byte, _ *upstream.Target) {
			handedOff.Add(1)
			conn.Close()
		},
	})
	conns := frontend.NewConnSet()
	t.Cleanup(func() {
		f.Close()
		if n := handedOff.Load(); n > 0 {
			t.Errorf("%d connections handed off to net/http", n)
		}
	})
	front := upstreamtest.Serve(t, func(ctx context.Context, c net.Conn) {
		live := frontend.NewLiveConn(c)
		if !conns.Add(live) {
			c.Close()
			return
		}
		defer conns.Remove(live)
		stop := context.AfterFunc(ctx, live.Close)
		defer stop()
		f.Serve(ctx, live, c, nil, m.Target("web", "web.local"))
	})
	return fc, m, front
}
