// Package tcp is the raw TCP front-end of upstream: a connection that
// speaks no protocol the mesh parses is proxied per connection. It asks
// the routing core for an instance (upstream.Mesh.Choose, without
// cookies), dials it with the core's dialer, moves on to another instance
// while dials fail as the service's retries and retry budget allow, and
// then copies bytes both ways, passing half-closes on. It knows nothing
// of the other front-ends.
package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// closeWriter is a connection that can end one direction only, as
// *net.TCPConn can.
type closeWriter interface {
	CloseWrite() error
}

// Proxy proxies raw connections to the instances the core picks.
type Proxy struct {
	mesh *upstream.Mesh
	log  *slog.Logger
	bufs *frontend.BufferPool
}

// New returns the raw TCP front-end of mesh.
func New(mesh *upstream.Mesh) *Proxy {
	return &Proxy{mesh: mesh, log: mesh.Logger(), bufs: frontend.NewBufferPool(32 << 10)}
}

// dialAny dials the selector's pick and, while dials fail, other
// instances (a failed dial never reached the instance), as the service's
// retries and retry budget allow. It returns the connection with the
// pick that routed it, whose in-flight count is not yet counted.
func (x *Proxy) dialAny(ctx context.Context, t *upstream.Target) (net.Conn, *upstream.Pick, error) {
	p := &upstream.Pick{}
	if _, msg, ok := x.mesh.Choose(ctx, t, p, nil); !ok {
		return nil, nil, errors.New(msg)
	}
	var errs []error
	for attempt := 0; ; attempt++ {
		e := p.Endpoint()
		p.ConnectBegins(time.Now())
		c, err := x.mesh.Dial(ctx, e.Addr)
		p.ConnectEnded()
		if err == nil {
			x.mesh.Connected(p)
			return c, p, nil
		}
		errs = append(errs, fmt.Errorf("instance %s: %w", e.Addr, err))
		if ctx.Err() != nil {
			break
		}
		if !x.mesh.Retry(p, "", true, err, attempt) {
			if p.BudgetDenied() {
				errs = append(errs, errors.New("not retried: retry budget exhausted"))
			}
			break
		}
	}
	return nil, nil, fmt.Errorf("dialling service %q: %w", t.Service(), errors.Join(errs...))
}

// Serve proxies one raw connection of t: the sniffed bytes (peeked)
// first, then both directions until each has ended. live is the
// dispatcher's record of the connection: the instance connection is
// attached to it, so that a shutdown or ctx ends both. Serve closes
// client.
func (x *Proxy) Serve(ctx context.Context, live *frontend.LiveConn, client net.Conn, peeked []byte, t *upstream.Target) {
	defer client.Close()
	up, p, err := x.dialAny(ctx, t)
	if err != nil {
		x.log.Warn("cannot proxy tcp connection", "service", t.Service(), "err", err)
		return
	}
	defer up.Close()
	e, inFlight := p.Endpoint(), p.InFlight()
	var sent, received int64
	defer func() { x.mesh.ConnClosed(p, sent, received) }()
	inFlight.Add(1) // least-request counts raw connections as requests in flight
	defer inFlight.Add(-1)
	if !live.Attach(up) {
		return // Shutdown or ctx closed the app's side meanwhile
	}
	if len(peeked) > 0 {
		n, err := up.Write(peeked)
		sent += int64(n)
		if err != nil {
			x.log.Debug("writing the first bytes to the instance", "service", t.Service(), "instance", e.Addr, "err", err)
			return
		}
	}
	toInstance, toApp := pipeBoth(client, up, x.bufs)
	sent, received = sent+toInstance, toApp
	x.log.Debug("tcp connection done", "service", t.Service(), "instance", e.Addr)
}

// pipeBoth copies a→b and b→a. A direction that ends cleanly is passed on
// as a half-close, so the other keeps flowing (a client that shuts down
// its writes still gets its answer); an error in either ends both. It
// returns the bytes copied each way.
func pipeBoth(a, b net.Conn, bufs *frontend.BufferPool) (aToB, bToA int64) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB = pipeOne(b, a, bufs, abort)
	}()
	bToA = pipeOne(a, b, bufs, abort)
	wg.Wait()
	abort()
	return aToB, bToA
}

// pipeOne copies src to dst. Between two *net.TCPConn, io.Copy splices in
// the kernel; the buffer is used only otherwise.
func pipeOne(dst, src net.Conn, bufs *frontend.BufferPool, abort func()) int64 {
	var n int64
	var err error
	if isTCP(dst) && isTCP(src) {
		n, err = io.Copy(dst, src)
	} else {
		buf := bufs.Get()
		n, err = io.CopyBuffer(dst, src, buf)
		bufs.Put(buf)
	}
	if err != nil {
		abort()
		return n
	}
	cw, ok := dst.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		abort()
	}
	return n
}

func isTCP(c net.Conn) bool {
	_, ok := c.(*net.TCPConn)
	return ok
}
