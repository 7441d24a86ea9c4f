package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// closeWriter is a connection that can end one direction only, as
// *net.TCPConn can.
type closeWriter interface {
	CloseWrite() error
}

// dialAny dials the selector's pick and, while dials fail, the instances
// after it, each at most once.
func (m *Mesh) dialAny(ctx context.Context, w *serviceWatch) (net.Conn, Endpoint, error) {
	set := w.set.Load()
	first, ok := w.selector.Select(set, nil)
	if !ok {
		return nil, Endpoint{}, fmt.Errorf("no healthy instance of service %q", w.name)
	}
	start := 0
	for i := range set.Len() {
		if e := set.At(i); e.ID == first.ID && e.Node == first.Node {
			start = i
			break
		}
	}
	var errs []error
	for k := range max(set.Len(), 1) {
		e := first
		if set.Len() > 0 {
			e = set.At((start + k) % set.Len())
		}
		c, err := m.cfg.Dialer.DialContext(ctx, "tcp", e.Addr)
		if err == nil {
			return c, e, nil
		}
		errs = append(errs, fmt.Errorf("instance %s: %w", e.Addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, Endpoint{}, fmt.Errorf("dialling service %q: %w", w.name, errors.Join(errs...))
}

// serveTCP proxies one raw connection: the sniffed bytes first, then both
// directions until each has ended.
func (m *Mesh) serveTCP(ctx context.Context, live *liveConn, client net.Conn, peeked []byte, w *serviceWatch) {
	defer client.Close()
	w.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	up, e, err := m.dialAny(ctx, w)
	if err != nil {
		m.log.Warn("cannot proxy tcp connection", "service", w.name, "err", err)
		return
	}
	defer up.Close()
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
