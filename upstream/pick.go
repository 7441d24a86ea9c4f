package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// This file is the one API the protocol front-ends (upstream/h1,
// upstream/httpfallback, upstream/tcp) route with: resolve the target of
// a connection, pick the instance of a request (Choose), report how each
// attempt went (Answered, Failed, InFlight), ask whether a failed attempt
// goes to another instance (Retry), and get the words of the error the
// app is told (FailureAnswer) and the sticky cookie to pin it (PinCookie).
// No front-end has a copy of its own.

// Target is what a connection of the app is for: the service, whose watch
// runs from the moment a Target names it, and the name the app used.
type Target struct {
	watch *serviceWatch
	host  string // the name the app used, for requests without a Host
}

// Target starts the watch of service unless it runs already, and returns
// the target of a connection to it; host is the name the app used to
// reach it ("web.local").
func (m *Mesh) Target(service, host string) *Target {
	return &Target{watch: m.watch(service), host: host}
}

// Service is the name of the target's service, lower-cased.
func (t *Target) Service() string { return t.watch.name }

// Host is the name the app used to reach the service.
func (t *Target) Host() string { return t.host }

// Pick is the routing of one request (or raw connection): the set and
// policy it routes on, the instance of its current attempt and those it
// tried. Only the request's own goroutine touches it. The zero Pick is
// ready for Choose; a front-end may keep one per connection and Reset it.
type Pick struct {
	target *Target
	set    *EndpointSet
	policy *Policy
	idx    int   // endpoint of the current (last) attempt
	tried  []int // endpoints tried, idx last
	cookie int   // endpoint the request's sticky cookie names; -1: none
	// budgetDenied is set when a retry was refused for want of budget.
	budgetDenied bool
	// stickyRouted: the request went where its valid sticky cookie said.
	stickyRouted bool
	// hadCookie: the request carried a sticky cookie value, valid or not;
	// a new cookie for it is a re-pin.
	hadCookie   bool
	now         int64          // unix ns when the pick was made
	attempt     int64          // unix ns when the current attempt began
	connectMark int64          // see ConnectBegins
	avail       func(int) bool // see availableNow
}

// Reset makes p ready for the next Choose, keeping what it allocated.
func (p *Pick) Reset() {
	*p = Pick{tried: p.tried[:0], avail: p.avail} // avail reads p
}

// Endpoint is the instance of the current attempt.
func (p *Pick) Endpoint() Endpoint { return p.set.At(p.idx) }

// Policy is the policy the request is routed with; it must not be changed.
func (p *Pick) Policy() *Policy { return p.policy }

// Target is what the request is for.
func (p *Pick) Target() *Target { return p.target }

// Tries is how many instances the request was sent to so far.
func (p *Pick) Tries() int { return len(p.tried) }

// BudgetDenied reports whether a retry was refused because the service's
// retry budget was spent.
func (p *Pick) BudgetDenied() bool { return p.budgetDenied }

// InFlight is the count of requests (and raw connections) in flight on
// one instance, which least-request balancing reads.
type InFlight struct{ h *hostState }

// Add adds n (1 when an attempt starts, -1 when it ends).
func (f InFlight) Add(n int64) { f.h.active.Add(n) }

// InFlight is the in-flight count of the current attempt's instance.
func (p *Pick) InFlight() InFlight { return InFlight{p.set.hosts[p.idx]} }

// ConnectBegins says that a connection to the current attempt's instance
// is being made from now on, so that one pending too long turns new
// requests away from the instance (unreachable.go); ConnectEnded says
// that the dial returned. A front-end calls both around every dial of
// Dial it makes for the pick.
func (p *Pick) ConnectBegins(now time.Time) {
	p.connectMark = p.set.hosts[p.idx].connectBegins(now.UnixNano())
}

// ConnectEnded: see ConnectBegins.
func (p *Pick) ConnectEnded() {
	p.set.hosts[p.idx].connectEnded(p.connectMark)
	p.connectMark = 0
}

// CookieFinder calls found with each sticky cookie value of a request
// called name, in order, until found returns true (see StickyCookieLine).
type CookieFinder func(name string, found func(StickyID) bool)

// Choose routes one request of t into p: the set and policy, the sticky
// cookie's instance when it is usable, else the selector's pick. It waits
// for Consul's first answer for the service, at most
// Config.FirstAnswerTimeout. cookies (nil: none, as for raw TCP) calls
// found with each sticky cookie value of the request. On false, code and
// msg are the 503 to answer.
func (m *Mesh) Choose(ctx context.Context, t *Target, p *Pick, cookies CookieFinder) (code, msg string, ok bool) {
	watch := t.watch
	answered := watch.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	now := time.Now()
	set, v, code, msg := m.route(watch, now, answered)
	if set == nil {
		p.target, p.set = nil, nil // Done must not take an earlier request's routing for this one's
		return code, msg, false
	}
	p.target, p.set, p.policy, p.cookie, p.budgetDenied, p.stickyRouted, p.hadCookie = t, set, &v.policy, -1, false, false, false
	p.now, p.idx = now.UnixNano(), -1
	p.attempt = p.now
	if v.policy.Sticky && set.sticky != nil && cookies != nil {
		cookies(v.policy.CookieName, func(id StickyID) bool {
			p.hadCookie = true
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
	if idx >= 0 {
		p.stickyRouted = true
		watch.metrics.StickyRouted()
	} else {
		var ok bool
		sel := watch.selector(&v.policy)
		if idx, ok = sel.Select(set, p.availableNow()); !ok {
			// None available: prefer one that is only suspect (a slow
			// connect) to one ejected; never all are ejected, a race at most.
			if idx, ok = sel.Select(set, func(i int) bool { return !set.hosts[i].ejected(p.now) }); !ok {
				idx, _ = sel.Select(set, nil)
			}
		}
	}
	if cap(p.tried) < 1+v.policy.Retries {
		p.tried = make([]int, 0, 1+v.policy.Retries)
	}
	p.idx, p.tried = idx, append(p.tried[:0], idx)
	set.hosts[idx].metrics.Attempt()
	watch.budget.request()
	return "", "", true
}

// route returns the set a request or connection for the service goes to
// at now, with the view it belongs to; or, when there is none, the error
// code and message to answer with.
func (m *Mesh) route(watch *serviceWatch, now time.Time, answered bool) (*EndpointSet, *serviceView, string, string) {
	v := watch.view.Load()
	if v == nil {
		if !answered {
			return nil, nil, ErrCodeNoAnswer, fmt.Sprintf("meshlet: consul has not answered yet for service %q", watch.name)
		}
		return nil, nil, ErrCodeNoInstance, fmt.Sprintf("meshlet: no healthy instance of service %q", watch.name)
	}
	if age, stale := watch.staleness(now, m.cfg.MaxStale); stale {
		if watch.staleLogged.CompareAndSwap(false, true) {
			m.log.Warn("refusing requests: the last good instances are older than the max staleness",
				"service", watch.name, "age", age.Round(time.Second), "max_stale", m.cfg.MaxStale)
		}
		return nil, nil, ErrCodeStale, fmt.Sprintf("meshlet: consul unreachable for %v; the last good instances of service %q are older than the max staleness (%v)",
			age.Round(time.Second), watch.name, m.cfg.MaxStale)
	}
	if code, msg := m.mtlsRefusal(watch, v); code != "" {
		return nil, nil, code, msg
	}
	set, panicking, why := v.route(now)
	if set == nil {
		if noMTLS := m.noMTLSRefusal(watch, v); noMTLS != "" {
			return nil, nil, ErrCodeNoMTLS, "meshlet: " + noMTLS
		}
		return nil, nil, ErrCodeNoInstance, fmt.Sprintf("meshlet: no healthy instance of service %q: %s", watch.name, why)
	}
	if panicking && v.panicLogged.CompareAndSwap(false, true) {
		m.log.Warn("panic routing: no instance passes its checks, routing to all registered ones", "service", watch.name, "registered", set.Len())
	}
	return set, v, "", ""
}

// availableNow is the selectors' test of an instance at p.now, made once
// per pick: a pick reused for the requests of a connection costs nothing.
func (p *Pick) availableNow() func(int) bool {
	if p.avail == nil {
		p.avail = func(i int) bool { return p.set.available(i, p.now) }
	}
	return p.avail
}

// Failed counts a failure (err) of the pick's current instance for
// passive health: an attempt that failed after the instance began to
// answer, and is therefore not Retry's to count.
func (m *Mesh) Failed(p *Pick, err error) { m.pickFailed(p, time.Now(), err) }

// pickFailed counts a failure (err) of the pick's current instance.
func (m *Mesh) pickFailed(p *Pick, now time.Time, err error) {
	m.instanceFailed(p.target.watch, p.set, p.idx, now, p.policy, err)
}

// StickyRouted reports whether the request went where its valid sticky
// cookie said.
func (p *Pick) StickyRouted() bool { return p.stickyRouted }

// instanceFailed counts a failure (err) of instance i of set for passive
// health (HTTP requests and raw connections alike), and logs an ejection.
// A connect timeout ejects at once (unreachable.go).
func (m *Mesh) instanceFailed(w *serviceWatch, set *EndpointSet, i int, now time.Time, policy *Policy, err error) {
	set.hosts[i].metrics.Failed()
	if connectTimedOut(err) {
		if n, ok := w.logs.connect.allow(now); ok {
			m.log.Warn("instance connect timed out", "service", w.name, "instance", set.At(i).Addr,
				"err", OneLine(err.Error()), "suppressed", n)
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

// Answered counts the answer head of the pick's current instance for
// passive health (a 5xx is a failure when the policy says so) and for
// its time to answer.
func (m *Mesh) Answered(p *Pick, status int) {
	now := time.Now()
	p.set.hosts[p.idx].answeredIn(now.UnixNano()-p.attempt, now.UnixNano())
	if status >= 500 && p.policy.Eject5xx {
		m.pickFailed(p, now, nil)
	} else {
		p.set.hosts[p.idx].succeeded(now.UnixNano(), p.policy)
	}
}

// Connected counts a connection made to the pick's current instance (raw
// TCP, where no answer is seen) as a success for passive health.
func (m *Mesh) Connected(p *Pick) {
	p.set.hosts[p.idx].succeeded(time.Now().UnixNano(), p.policy)
	p.target.watch.metrics.TCPOpened()
}

// Retry decides whether an attempt that failed with err before any
// response byte is tried again, and if so moves p to the next instance:
// when the dial failed (any method), or the connection failed or the try
// timeout passed before any answer and the method is idempotent (GET,
// HEAD, OPTIONS, PUT, DELETE); and only while the policy's retries and
// the service's retry budget allow and an untried, non-ejected instance
// is left. It counts the failure. The caller has checked that the app is
// still there and the request's own timeout has not passed. replayable
// says whether the whole request body could be sent again; method is ""
// for a raw connection, whose only retryable failure is a dial's.
func (m *Mesh) Retry(p *Pick, method string, replayable bool, err error, attempt int) bool {
	var denied *DeniedError
	if errors.As(err, &denied) {
		return false // an intention's refusal, no failure of the instance: every other one refuses too
	}
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
		w.metrics.RetryRefused()
		if last := w.budget.lastDeny.Swap(nowNs); nowNs-last > int64(10*time.Second) {
			m.log.Warn("retry budget exhausted: not retrying", "service", w.name,
				"budget", p.policy.RetryBudget, "min_per_sec", p.policy.RetryMinPerSec, "denied_so_far", w.budget.denied.Load())
		}
		return false
	}
	if n, ok := w.logs.retry.allow(now); ok {
		if method == "" {
			m.log.Info("retrying a connection on another instance", "service", w.name,
				"instance", p.Endpoint().Addr, "next", p.set.At(next).Addr, "reason", OneLine(err.Error()), "suppressed", n)
		} else {
			m.log.Info("retrying on another instance", "service", w.name, "method", method,
				"instance", p.Endpoint().Addr, "next", p.set.At(next).Addr, "reason", OneLine(err.Error()), "suppressed", n)
		}
	}
	p.idx, p.attempt = next, nowNs
	p.tried = append(p.tried, next)
	w.metrics.Retry()
	p.set.hosts[next].metrics.Attempt()
	return true
}

// failedAddr is the instance a failed request was last sent to.
func failedAddr(p *Pick, err error) string {
	var ie *InstanceError
	if errors.As(err, &ie) {
		return ie.Addr
	}
	return p.Endpoint().Addr
}

// FailedAddr is the instance a failed request was last sent to: the one
// an *InstanceError in err names, else the pick's current one.
func FailedAddr(p *Pick, err error) string { return failedAddr(p, err) }

// FailureAnswer logs why a request failed on its instances and returns
// the answer the app gets. timedOut says the request's own timeout passed.
func (m *Mesh) FailureAnswer(p *Pick, err error, timedOut bool) (status int, code, msg string) {
	addr := failedAddr(p, err)
	name := p.target.watch.name
	budget := ""
	if p.budgetDenied {
		budget = " (not retried: retry budget exhausted)"
	}
	var (
		de     *dialError
		denied *DeniedError
	)
	switch {
	case errors.As(err, &denied):
		m.log.Warn("request refused: a consul intention denies it", "service", name, "intention", denied.Intention)
		return http.StatusForbidden, ErrCodeDenied, "meshlet: " + denied.Error()
	case timedOut:
		m.log.Warn("request timed out", "service", name, "instance", addr, "timeout", p.policy.Timeout, "tries", len(p.tried))
		return http.StatusGatewayTimeout, ErrCodeTimeout,
			fmt.Sprintf("meshlet: service %q did not answer within its timeout of %v (%d tries)", name, p.policy.Timeout, len(p.tried))
	case errors.Is(err, ErrTryTimeout):
		m.log.Warn("instance timed out", "service", name, "instance", addr, "try_timeout", p.policy.TryTimeout, "tries", len(p.tried))
		return http.StatusGatewayTimeout, ErrCodeTimeout,
			fmt.Sprintf("meshlet: instance %s of service %q did not answer within the try timeout of %v (%d tries)%s", addr, name, p.policy.TryTimeout, len(p.tried), budget)
	case errors.As(err, &de):
		m.log.Warn("instance unreachable", "service", name, "instance", addr, "err", err, "tries", len(p.tried))
		return http.StatusBadGateway, ErrCodeUnreachable,
			fmt.Sprintf("meshlet: instance %s of service %q unreachable: %s (%d tries)%s", addr, name, OneLine(err.Error()), len(p.tried), budget)
	default:
		m.log.Warn("instance failed", "service", name, "instance", addr, "err", err, "tries", len(p.tried))
		return http.StatusBadGateway, ErrCodeFailed,
			fmt.Sprintf("meshlet: instance %s of service %q failed: %s (%d tries)%s", addr, name, OneLine(err.Error()), len(p.tried), budget)
	}
}

// PinCookie returns the Set-Cookie value that pins the client to the
// instance that answered, when the service is sticky and the request's
// cookie named another instance or none. The caller leaves it out when
// the instance sets a cookie of that name itself.
func (p *Pick) PinCookie() (string, bool) {
	if !p.policy.Sticky || p.set.codec == nil || p.cookie == p.idx {
		return "", false
	}
	// A request whose cookie named an instance that is gone, failing or
	// ejected (or no instance at all) is re-pinned; one without is pinned.
	p.target.watch.metrics.StickyPinned(p.hadCookie)
	maxAge := 0
	if p.policy.CookieMaxAge > 0 {
		maxAge = max(1, int(p.policy.CookieMaxAge/time.Second))
	}
	return p.set.codec.setCookie(p.set.ids[p.idx], maxAge), true
}
