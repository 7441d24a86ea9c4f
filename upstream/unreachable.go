package upstream

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// An instance whose container was killed black-holes: connections to it
// are neither accepted nor refused. Counting such dials as ordinary
// failures would make every fresh request wait the whole connect timeout
// before its retry, until passive health had seen EjectAfter of them or
// Consul's check lapsed (13–22 s in the compose scenario). So the first
// connect timeout ejects the instance at once, and a probe, not the next
// request, finds out when it accepts connections again. Before that
// first timeout, a connect pending for longer than slowConnect already
// turns new requests away from the instance: only those that were sent to
// it in that short time wait for the timeout.

const (
	// slowConnect is how long a connect may be pending before new requests
	// avoid the instance. On a service network a connect takes well under
	// a millisecond; even a loaded host makes one in a few. A false alarm
	// costs nothing but a turn given to another instance.
	slowConnect = 200 * time.Millisecond
	// probeEvery is how often a probe dials an instance it keeps out.
	probeEvery = time.Second
	// probeFor bounds a probe: an instance still silent after it has
	// almost certainly left Consul already; if not, its ejection lapses and
	// the next connect timeout starts a new probe.
	probeFor = 10 * time.Minute
	// logEvery rate-limits the log lines of one kind for one service.
	logEvery = 5 * time.Second
)

// connectTimedOut reports whether err is a dial to an instance that timed
// out (the dialer's own timeout, or the try's or request's deadline
// passing during the dial), as opposed to one refused or reset.
func connectTimedOut(err error) bool {
	var de *dialError
	if !errors.As(err, &de) {
		return false
	}
	var ne net.Error
	return errors.Is(de.err, ErrTryTimeout) || errors.Is(de.err, ErrRequestTimeout) ||
		errors.Is(de.err, context.DeadlineExceeded) || errors.Is(de.err, os.ErrDeadlineExceeded) ||
		(errors.As(de.err, &ne) && ne.Timeout())
}

// unreachable ejects instance i of set after a connect timeout, at once
// (not after EjectAfter failures), within the policy's share of ejected
// instances, and starts a probe that keeps it out until it accepts a
// connection. An EjectAfter of 0 turns passive health off, this included.
func (m *Mesh) unreachable(service string, set *EndpointSet, i int, now time.Time, p *Policy, logs *serviceLogs) {
	if p.EjectAfter <= 0 {
		return
	}
	h := set.hosts[i]
	h.failures.Add(1)
	d, ejected := set.eject(i, now, p)
	if !ejected {
		return
	}
	e := set.At(i)
	if n, ok := logs.eject.allow(now); ok {
		m.log.Warn("ejecting instance: connect timed out; a probe readmits it once it accepts connections",
			"service", service, "instance", e.Addr, "id", e.ID, "for_at_least", d, "suppressed", n)
	}
	m.probe(service, e, h, logs)
}

// probe dials the instance of h every probeEvery, at its address in the
// latest set, keeping it ejected while the dials fail, and ends its
// ejection when one succeeds. One probe runs per instance; it stops when
// the instance is readmitted otherwise (Consul passes it again) or leaves.
func (m *Mesh) probe(service string, e Endpoint, h *hostState, logs *serviceLogs) {
	if !h.probing.CompareAndSwap(false, true) {
		return
	}
	gen := h.readmits.Load()
	ctx := m.runContext()
	go func() {
		ctx, cancel := context.WithTimeout(ctx, probeFor)
		defer cancel()
		t := time.NewTicker(probeEvery)
		defer t.Stop()
		timeout := m.cfg.Dialer.Timeout
		if timeout <= 0 {
			timeout = DefaultDialTimeout
		}
		for {
			select {
			case <-ctx.Done():
				h.probing.Store(false)
				return
			case <-t.C:
			}
			if h.gone.Load() || h.readmits.Load() != gen {
				h.probing.Store(false)
				return
			}
			// Kept out for this round, whatever its ejection time said;
			// a readmission meanwhile wins.
			hold := time.Now().Add(probeEvery + timeout + time.Second).UnixNano()
			if cur := h.ejectedUntil.Load(); cur < hold && h.ejectedUntil.CompareAndSwap(cur, hold) && h.readmits.Load() != gen {
				h.ejectedUntil.CompareAndSwap(hold, 0)
			}
			addr := e.Addr
			if a := h.addr.Load(); a != nil {
				addr = *a
			}
			dctx, stop := context.WithTimeout(ctx, timeout)
			c, err := m.cfg.Dialer.DialContext(dctx, "tcp", addr)
			stop()
			if err != nil {
				continue
			}
			c.Close()
			// The probe ends before the instance is back, so that its next
			// connect timeout can start a new one.
			h.probing.Store(false)
			h.failures.Store(0)
			h.ejectedUntil.Store(0)
			if n, ok := logs.readmit.allow(time.Now()); ok {
				m.log.Info("readmitting instance: it accepts connections again", "service", service,
					"instance", addr, "id", e.ID, "suppressed", n)
			}
			return
		}
	}()
}

// ConnectBegins marks a connect to h as pending at now, unless an older
// one is; it returns the mark to hand to ConnectEnded, 0 when it set none.
// ConnectEnded clears only its own mark: an older connect still pending
// keeps the instance suspect, and ejects it when it times out.
func (h *hostState) connectBegins(now int64) int64 {
	if h.connecting.CompareAndSwap(0, now) {
		return now
	}
	return 0
}

func (h *hostState) connectEnded(mark int64) {
	if mark != 0 {
		h.connecting.CompareAndSwap(mark, 0)
	}
}

// runContext is Run's context while it runs, so that probes end with it;
// before Run (tests that never call it), a background context.
func (m *Mesh) runContext() context.Context {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx == nil {
		return context.Background()
	}
	return m.runCtx
}

// serviceLogs rate-limits, per service, the log lines that a failing
// instance would otherwise repeat for every request.
type serviceLogs struct {
	retry, connect, eject, readmit logLimit
}

// logLimit lets one line through per logEvery and counts those it held
// back, which the next line reports.
type logLimit struct {
	last       atomic.Int64 // unix ns of the last line let through
	suppressed atomic.Int64
}

// allow reports whether a line may be logged at now, and how many were
// held back since the last one.
func (l *logLimit) allow(now time.Time) (suppressed int64, ok bool) {
	ns := now.UnixNano()
	last := l.last.Load()
	if (last != 0 && ns-last < int64(logEvery)) || !l.last.CompareAndSwap(last, ns) {
		l.suppressed.Add(1)
		return 0, false
	}
	return l.suppressed.Swap(0), true
}
