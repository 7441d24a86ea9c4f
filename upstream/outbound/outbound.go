// Package outbound is where the app's outbound connections enter
// upstream: it sniffs each connection's first bytes and hands it to the
// front-end of its protocol, and it drains them all on shutdown. It is
// the one package that knows every front-end, and wires them: the
// HTTP/1.1 forwarder (upstream/h1), which hands what it does not serve to
// the net/http fallback (upstream/httpfallback), and raw TCP
// (upstream/tcp). All of them route through the core (upstream.Mesh),
// which the agent builds and runs.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/h1"
	"github.com/meshlet/meshlet/upstream/h2"
	"github.com/meshlet/meshlet/upstream/httpfallback"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
	"github.com/meshlet/meshlet/upstream/tcp"
)

// DefaultSniffTimeout is the default of Config.SniffTimeout.
const DefaultSniffTimeout = 300 * time.Millisecond

// Config is what a [Dispatcher] needs besides the routing core. Zero
// values take the defaults.
type Config struct {
	// SniffTimeout is how long ServeConn waits for the app's first bytes to
	// tell HTTP from other TCP. Protocols where the server speaks first send
	// nothing, so they are proxied as TCP once it has passed.
	SniffTimeout time.Duration

	// appCheck is the forwarder's h1.Config.AppCheck; tests shorten it.
	appCheck time.Duration
}

// Dispatcher serves the app's connections with the front-ends.
type Dispatcher struct {
	mesh     *upstream.Mesh
	log      *slog.Logger
	cfg      Config
	conns    *frontend.ConnSet
	h1       *h1.Forwarder
	fallback *httpfallback.Server
	h2       *h2.Server
	tcp      *tcp.Proxy
}

// New checks cfg and returns the dispatcher of mesh's connections.
func New(mesh *upstream.Mesh, cfg Config) (*Dispatcher, error) {
	if cfg.SniffTimeout < 0 {
		return nil, fmt.Errorf("outbound config: SniffTimeout is negative (%v)", cfg.SniffTimeout)
	}
	if cfg.SniffTimeout == 0 {
		cfg.SniffTimeout = DefaultSniffTimeout
	}
	d := &Dispatcher{
		mesh:     mesh,
		log:      mesh.Logger(),
		cfg:      cfg,
		conns:    frontend.NewConnSet(),
		fallback: httpfallback.New(mesh),
		h2:       h2.New(mesh),
		tcp:      tcp.New(mesh),
	}
	d.h1 = h1.New(mesh, h1.Config{HandOff: d.fallback.Serve, AppCheck: cfg.appCheck})
	return d, nil
}

// ServeConn proxies one connection the app made to service and returns
// when it is done. host is the name the app used to reach the service
// ("web.local"), sent as Host for requests that have none. HTTP/1.x and
// h2c are proxied per request, anything else per connection; a service
// declared tcp is proxied per connection without waiting for the app's
// first bytes, and HTTP/1.x to a service declared http2 or grpc goes to
// the HTTP/2 front-end, which speaks h2c to its instances. ServeConn closes conn, also when ctx ends.
func (d *Dispatcher) ServeConn(ctx context.Context, conn net.Conn, service string, host string) {
	if service == "" {
		d.log.Warn("dropping a connection for no service", "from", conn.RemoteAddr())
		conn.Close()
		return
	}
	live := frontend.NewLiveConn(conn)
	if !d.conns.Add(live) {
		conn.Close()
		return
	}
	defer d.conns.Remove(live)
	stop := context.AfterFunc(ctx, live.Close)
	defer stop()

	t := d.mesh.Target(service, host)
	hint := d.mesh.Protocol(ctx, t)
	if hint == upstream.ProtocolTCP {
		d.tcp.Serve(ctx, live, conn, nil, t)
		return
	}
	proto, peeked, err := sniff(conn, d.cfg.SniffTimeout)
	if err != nil {
		d.log.Debug("dropping connection", "service", t.Service(), "from", conn.RemoteAddr(), "err", err)
		conn.Close()
		return
	}
	switch proto {
	case protoTCP:
		d.tcp.Serve(ctx, live, conn, peeked, t)
	case protoH2:
		d.h2.Serve(ctx, conn, peeked, t)
	case protoHTTP:
		if hint == upstream.ProtocolHTTP2 || hint == upstream.ProtocolGRPC {
			// Instances that speak HTTP/2 (a gRPC server may speak
			// nothing else): HTTP/1.1 requests go to them as h2c too.
			d.h2.Serve(ctx, conn, peeked, t)
			return
		}
		d.h1.Serve(ctx, live, conn, peeked, t)
	default:
		d.h1.Serve(ctx, live, conn, peeked, t)
	}
}

// Shutdown stops taking connections, lets requests in flight and raw
// connections finish until ctx ends, then closes whatever is left. Idle
// keep-alive connections are closed at once.
func (d *Dispatcher) Shutdown(ctx context.Context) error {
	drained := d.conns.Drain()
	d.h1.Close()
	err := errors.Join(d.fallback.Shutdown(ctx), d.h2.Shutdown(ctx))
	if err == nil {
		select {
		case <-drained:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		d.fallback.Close()
		d.h2.Close()
		d.conns.CloseAll()
		return fmt.Errorf("draining proxied connections: %w", err)
	}
	return nil
}
