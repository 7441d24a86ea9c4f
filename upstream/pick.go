package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// This file holds what both HTTP paths (the forwarder of h1conn.go and the
// net/http one of httpproxy.go) share: picking the instance, deciding a
// retry, counting answers for passive health, and the words of the errors
// the app gets. Neither path has a copy of its own.

// choose routes one request of t into p: the set and policy, the sticky
// cookie's instance when it is usable, else the selector's pick. cookies
// calls found with each sticky cookie value of the request (see
// stickyCookies). On false, code and msg are the 503 to answer.
func (m *Mesh) choose(ctx context.Context, t *connTarget, p *pick, cookies func(name string, found func(stickyID) bool)) (code, msg string, ok bool) {
	watch := t.watch
	answered := watch.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	now := time.Now()
	set, v, code, msg := m.route(watch, now, answered)
	if set == nil {
		return code, msg, false
	}
	p.target, p.set, p.policy, p.cookie, p.budgetDenied = t, set, &v.policy, -1, false
	p.now, p.idx = now.UnixNano(), -1
	if v.policy.Sticky && set.sticky != nil {
		cookies(v.policy.CookieName, func(id stickyID) bool {
			i, ok := p.set.sticky[id]
			if !ok {
				return false // forged, or an instance not in the set: look on
			}
			p.cookie = i
			if p.set.available(i, p.now) {
				p.idx = i
			}
			return true
		})
	}
	idx := p.idx
	if idx < 0 {
		var ok bool
		sel := watch.selector(&v.policy)
		if idx, ok = sel.Select(set, p.availableNow()); !ok {
			idx, _ = sel.Select(set, nil) // never all are ejected; a race at most
		}
	}
	if cap(p.tried) < 1+v.policy.Retries {
		p.tried = make([]int, 0, 1+v.policy.Retries)
	}
	p.idx, p.tried = idx, append(p.tried[:0], idx)
	watch.budget.request()
	return "", "", true
}

// availableNow is the selectors' test of an instance at p.now, made once
// per pick: a pick reused for the requests of a connection costs nothing.
func (p *pick) availableNow() func(int) bool {
	if p.avail == nil {
		p.avail = func(i int) bool { return p.set.available(i, p.now) }
	}
	return p.avail
}

// pickFailed counts a failure (err) of the pick's current instance.
func (m *Mesh) pickFailed(p *pick, now time.Time, err error) {
	m.instanceFailed(p.target.watch, p.set, p.idx, now, p.policy, err)
}

// instanceFailed counts a failure (err) of instance i of set for passive
// health (HTTP requests and raw connections alike), and logs an ejection.
// A connect timeout ejects at once (unreachable.go).
func (m *Mesh) instanceFailed(w *serviceWatch, set *EndpointSet, i int, now time.Time, policy *Policy, err error) {
	if connectTimedOut(err) {
		if n, ok := w.logs.connect.allow(now); ok {
			m.log.Warn("instance connect timed out", "service", w.name, "instance", set.At(i).Addr,
				"err", oneLine(err.Error()), "suppressed", n)
		}
		m.unreachable(w.name, set, i, now, policy, &w.logs)
		return
	}
	if d, ejected := set.failed(i, now, policy); ejected {
		if n, ok := w.logs.eject.allow(now); ok {
			e := set.At(i)
			m.log.Warn("ejecting instance after consecutive failures", "service", w.name,
				"instance", e.Addr, "id", e.ID, "for", d, "suppressed", n)
		}
	}
}

// pickAnswered counts the answer head of the pick's current instance for
// passive health: a 5xx is a failure when the policy says so.
func (m *Mesh) pickAnswered(p *pick, status int) {
	now := time.Now()
	p.set.hosts[p.idx].answeredIn(now.UnixNano()-p.now, now.UnixNano())
	if status >= 500 && p.policy.Eject5xx {
		m.pickFailed(p, now, nil)
	} else {
		p.set.hosts[p.idx].succeeded(now.UnixNano(), p.policy)
	}
}

// retryPick decides whether an attempt that failed with err before any
// response byte is tried again, and if so moves p to the next instance.
// It counts the failure. The caller has checked that the app is still
// there and the request's own timeout has not passed. replayable says
// whether the whole request body could be sent again.
func (m *Mesh) retryPick(p *pick, method string, replayable bool, err error, attempt int) bool {
	now := time.Now()
	m.pickFailed(p, now, err)
	if attempt >= p.policy.Retries || !retryable(err, method) || !replayable {
		return false
	}
	nowNs := now.UnixNano()
	w := p.target.watch
	next, ok := w.selector(p.policy).Retry(p.set, func(i int) bool {
		return p.set.available(i, nowNs) && !slices.Contains(p.tried, i)
	})
	if !ok {
		return false
	}
	if !w.budget.allow(now, p.policy) {
		p.budgetDenied = true
		if last := w.budget.lastDeny.Swap(nowNs); nowNs-last > int64(10*time.Second) {
			m.log.Warn("retry budget exhausted: not retrying", "service", w.name,
				"budget", p.policy.RetryBudget, "min_per_sec", p.policy.RetryMinPerSec, "denied_so_far", w.budget.denied.Load())
		}
		return false
	}
	if n, ok := w.logs.retry.allow(now); ok {
		m.log.Info("retrying on another instance", "service", w.name, "method", method,
			"instance", p.endpoint().Addr, "next", p.set.At(next).Addr, "reason", oneLine(err.Error()), "suppressed", n)
	}
	p.idx = next
	p.tried = append(p.tried, next)
	return true
}

// failedAddr is the instance a failed request was last sent to.
func failedAddr(p *pick, err error) string {
	var ie *instanceError
	if errors.As(err, &ie) {
		return ie.addr
	}
	return p.endpoint().Addr
}

// failureAnswer logs why a request failed on its instances and returns
// the answer the app gets. timedOut says the request's own timeout passed.
func (m *Mesh) failureAnswer(p *pick, err error, timedOut bool) (status int, code, msg string) {
	addr := failedAddr(p, err)
	name := p.target.watch.name
	budget := ""
	if p.budgetDenied {
		budget = " (not retried: retry budget exhausted)"
	}
	var de *dialError
	switch {
	case timedOut:
		m.log.Warn("request timed out", "service", name, "instance", addr, "timeout", p.policy.Timeout, "tries", len(p.tried))
		return http.StatusGatewayTimeout, ErrCodeTimeout,
			fmt.Sprintf("meshlet: service %q did not answer within its timeout of %v (%d tries)", name, p.policy.Timeout, len(p.tried))
	case errors.Is(err, errTryTimeout):
		m.log.Warn("instance timed out", "service", name, "instance", addr, "try_timeout", p.policy.TryTimeout, "tries", len(p.tried))
		return http.StatusGatewayTimeout, ErrCodeTimeout,
			fmt.Sprintf("meshlet: instance %s of service %q did not answer within the try timeout of %v (%d tries)%s", addr, name, p.policy.TryTimeout, len(p.tried), budget)
	case errors.As(err, &de):
		m.log.Warn("instance unreachable", "service", name, "instance", addr, "err", err, "tries", len(p.tried))
		return http.StatusBadGateway, ErrCodeUnreachable,
			fmt.Sprintf("meshlet: instance %s of service %q unreachable: %s (%d tries)%s", addr, name, oneLine(err.Error()), len(p.tried), budget)
	default:
		m.log.Warn("instance failed", "service", name, "instance", addr, "err", err, "tries", len(p.tried))
		return http.StatusBadGateway, ErrCodeFailed,
			fmt.Sprintf("meshlet: instance %s of service %q failed: %s (%d tries)%s", addr, name, oneLine(err.Error()), len(p.tried), budget)
	}
}

// pinCookie returns the Set-Cookie value that pins the client to the
// instance that answered, when the service is sticky and the request's
// cookie named another instance or none. The caller leaves it out when
// the instance sets a cookie of that name itself.
func pinCookie(p *pick) (string, bool) {
	if !p.policy.Sticky || p.set.codec == nil || p.cookie == p.idx {
		return "", false
	}
	maxAge := 0
	if p.policy.CookieMaxAge > 0 {
		maxAge = max(1, int(p.policy.CookieMaxAge/time.Second))
	}
	return p.set.codec.setCookie(p.set.ids[p.idx], maxAge), true
}
