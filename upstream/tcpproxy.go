package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// closeWriter is a connection that can end one direction only, as
// *net.TCPConn can.
type closeWriter interface {
	CloseWrite() error
}

// dialAny dials the selector's pick and, while dials fail, other
// instances (a failed dial never reached the instance), as the service's
// retries and retry budget allow. It returns the connection with the
// instance's runtime state, which counts it as in flight.
func (m *Mesh) dialAny(ctx context.Context, w *serviceWatch, answered bool) (net.Conn, Endpoint, *hostState, error) {
	set, v, _, msg := m.route(w, time.Now(), answered)
	if set == nil {
		return nil, Endpoint{}, nil, errors.New(msg)
	}
	p := &v.policy
	sel := w.selector(p)
	w.budget.request()
	var (
		tried []int
		errs  []error
	)
	for attempt := 0; attempt <= p.Retries; attempt++ {
		now := time.Now()
		nowNs := now.UnixNano()
		usable := func(i int) bool { return set.available(i, nowNs) && !slices.Contains(tried, i) }
		var (
			i  int
			ok bool
		)
		if attempt == 0 {
			i, ok = sel.Select(set, usable)
		} else {
			i, ok = sel.Retry(set, usable)
		}
		if !ok && attempt == 0 {
			i, ok = sel.Select(set, nil) // never all are ejected; a race at most
		}
		if !ok {
			break
		}
		if attempt > 0 && !w.budget.allow(now, p) {
			errs = append(errs, errors.New("not retried: retry budget exhausted"))
			break
		}
		tried = append(tried, i)
		e := set.At(i)
		if attempt > 0 {
			if n, ok := w.logs.retry.allow(now); ok {
				m.log.Info("retrying a connection on another instance", "service", w.name,
					"instance", set.At(tried[attempt-1]).Addr, "next", e.Addr, "reason", oneLine(errs[len(errs)-1].Error()), "suppressed", n)
			}
		}
		set.hosts[i].connectBegins(nowNs)
		c, err := m.cfg.Dialer.DialContext(ctx, "tcp", e.Addr)
		set.hosts[i].connectEnded()
		if err == nil {
			set.hosts[i].succeeded(time.Now().UnixNano(), p)
			return c, e, set.hosts[i], nil
		}
		errs = append(errs, fmt.Errorf("instance %s: %w", e.Addr, err))
		if ctx.Err() != nil {
			break
		}
		m.instanceFailed(w, set, i, time.Now(), p, &dialError{addr: e.Addr, err: err})
	}
	return nil, Endpoint{}, nil, fmt.Errorf("dialling service %q: %w", w.name, errors.Join(errs...))
}

// serveTCP proxies one raw connection: the sniffed bytes first, then both
// directions until each has ended.
func (m *Mesh) serveTCP(ctx context.Context, live *liveConn, client net.Conn, peeked []byte, w *serviceWatch) {
	defer client.Close()
	answered := w.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	up, e, h, err := m.dialAny(ctx, w, answered)
	if err != nil {
		m.log.Warn("cannot proxy tcp connection", "service", w.name, "err", err)
		return
	}
	defer up.Close()
	h.active.Add(1) // least-request counts raw connections as requests in flight
	defer h.active.Add(-1)
	if !live.attach(up) {
		return // Shutdown or ctx closed the app's side meanwhile
	}
	if len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			m.log.Debug("writing the first bytes to the instance", "service", w.name, "instance", e.Addr, "err", err)
			return
		}
	}
	pipeBoth(client, up, m.bufs)
	m.log.Debug("tcp connection done", "service", w.name, "instance", e.Addr)
}

// pipeBoth copies a→b and b→a. A direction that ends cleanly is passed on
// as a half-close, so the other keeps flowing (a client that shuts down
// its writes still gets its answer); an error in either ends both.
func pipeBoth(a, b net.Conn, bufs *bufferPool) {
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
		pipeOne(b, a, bufs, abort)
	}()
	pipeOne(a, b, bufs, abort)
	wg.Wait()
	abort()
}

// pipeOne copies src to dst. Between two *net.TCPConn, io.Copy splices in
// the kernel; the buffer is used only otherwise.
func pipeOne(dst, src net.Conn, bufs *bufferPool, abort func()) {
	var err error
	if isTCP(dst) && isTCP(src) {
		_, err = io.Copy(dst, src)
	} else {
		buf := bufs.Get()
		_, err = io.CopyBuffer(dst, src, buf)
		bufs.Put(buf)
	}
	if err != nil {
		abort()
		return
	}
	cw, ok := dst.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		abort()
	}
}

func isTCP(c net.Conn) bool {
	_, ok := c.(*net.TCPConn)
	return ok
}
