package upstream

import (
	"testing"
	"time"
)

func TestEjection(t *testing.T) {
	base := time.Unix(1000, 0)
	pol := func(after int, share float64) *Policy {
		p := DefaultPolicy("web")
		p.EjectAfter, p.EjectMaxShare, p.EjectTime = after, share, 10*time.Second
		return &p
	}
	type step struct {
		host  int
		fail  bool // else success
		at    time.Duration
		eject bool // want this failure to eject, for how long:
		for_  time.Duration
	}
	for _, tc := range []struct {
		name   string
		n      int
		policy *Policy
		steps  []step
	}{
		{"ejects after the threshold", 3, pol(3, 0.5), []step{
			{0, true, 0, false, 0}, {0, true, 0, false, 0}, {0, true, 0, true, 10 * time.Second},
		}},
		{"a success in between resets the streak", 3, pol(2, 0.5), []step{
			{0, true, 0, false, 0}, {0, false, 0, false, 0}, {0, true, 0, false, 0}, {0, true, 0, true, 10 * time.Second},
		}},
		{"0 turns ejection off", 3, pol(0, 0.5), []step{{0, true, 0, false, 0}, {0, true, 0, false, 0}}},
		{"never all: one of one stays", 1, pol(1, 1), []step{{0, true, 0, false, 0}, {0, true, 0, false, 0}}},
		{"never all: the last of two stays", 2, pol(1, 1), []step{{0, true, 0, true, 10 * time.Second}, {1, true, 0, false, 0}}},
		{"the share caps ejections", 4, pol(1, 0.5), []step{
			{0, true, 0, true, 10 * time.Second}, {1, true, 0, true, 10 * time.Second}, {2, true, 0, false, 0},
		}},
		{"a small share still ejects one", 3, pol(1, 0.1), []step{{0, true, 0, true, 10 * time.Second}, {1, true, 0, false, 0}}},
		{"a share of 0 ejects none", 3, pol(1, 0), []step{{0, true, 0, false, 0}}},
		{"ejection time grows with each ejection in a row", 3, pol(1, 0.5), []step{
			{0, true, 0, true, 10 * time.Second},
			{0, true, 11 * time.Second, true, 20 * time.Second}, // back after 10 s, fails at once
			{0, true, 32 * time.Second, true, 30 * time.Second},
		}},
		{"serving well for a base time forgets past ejections", 3, pol(1, 0.5), []step{
			{0, true, 0, true, 10 * time.Second},
			{0, false, 21 * time.Second, false, 0}, // ejection ended at 10 s, good for 11 s
			{0, true, 22 * time.Second, true, 10 * time.Second},
		}},
		{"an ejected instance is back on its own, and frees its slot", 4, pol(1, 0.25), []step{
			{0, true, 0, true, 10 * time.Second},
			{1, true, 5 * time.Second, false, 0}, // 0 still out: the one slot is taken
			{1, true, 11 * time.Second, true, 10 * time.Second},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := newEndpointSet(endpointsN(tc.n))
			for k, s := range tc.steps {
				now := base.Add(s.at)
				if !s.fail {
					set.hosts[s.host].succeeded(now.UnixNano(), tc.policy)
					continue
				}
				d, ejected := set.failed(s.host, now, tc.policy)
				if ejected != s.eject || d != s.for_ {
					t.Errorf("step %d: ejected %v for %v, want %v for %v", k, ejected, d, s.eject, s.for_)
				}
				if ejected {
					if set.available(s.host, now.UnixNano()) || set.available(s.host, now.Add(d-time.Nanosecond).UnixNano()) {
						t.Errorf("step %d: available while ejected", k)
					}
					if !set.available(s.host, now.Add(d).UnixNano()) {
						t.Errorf("step %d: not back after %v", k, d)
					}
				}
			}
		})
	}
}

func TestEjectionFactorIsCapped(t *testing.T) {
	p := DefaultPolicy("web")
	p.EjectAfter, p.EjectTime = 1, time.Second
	set := newEndpointSet(endpointsN(2))
	now := time.Unix(0, 0)
	var last time.Duration
	for range 20 {
		d, ok := set.failed(0, now, &p)
		if !ok {
			t.Fatal("not ejected")
		}
		last = d
		now = now.Add(d)
	}
	if last != maxEjectionFactor*time.Second {
		t.Errorf("20th ejection lasts %v, want the cap %v", last, maxEjectionFactor*time.Second)
	}
}

func TestHostStateIsSharedAcrossSets(t *testing.T) {
	var reg hostRegistry
	eps := endpointsN(3)
	a := buildSet(append([]Endpoint(nil), eps...), &reg, nil)
	b := buildSet(append([]Endpoint(nil), eps[1:]...), &reg, nil) // a later answer without id-0
	if a.hosts[1] != b.hosts[0] {
		t.Error("the same instance got new state in a new set")
	}
	reg.keep(map[string]bool{hostKey(eps[1]): true})
	c := buildSet(append([]Endpoint(nil), eps...), &reg, nil)
	if c.hosts[1] != a.hosts[1] || c.hosts[0] == a.hosts[0] {
		t.Error("keep dropped the wrong state")
	}
}

func TestRetryBudget(t *testing.T) {
	p := DefaultPolicy("web")
	p.RetryBudget, p.RetryMinPerSec = 0.2, 2
	var b retryBudget
	now := time.Unix(0, 0)
	allowed := 0
	for b.allow(now, &p) {
		allowed++
		if allowed > 100 {
			t.Fatal("unbounded")
		}
	}
	if want := RetryBudgetBurst + 2; allowed != want {
		t.Errorf("a fresh budget allowed %d retries at once, want %d", allowed, want)
	}
	// 100 requests earn 20 retries, capped at the burst.
	for range 100 {
		b.request()
	}
	allowed = 0
	for b.allow(now, &p) {
		allowed++
	}
	if allowed != RetryBudgetBurst+2 {
		t.Errorf("after 100 requests: %d retries, want %d (capped)", allowed, RetryBudgetBurst+2)
	}
	for range 10 {
		b.request()
	}
	allowed = 0
	for b.allow(now, &p) {
		allowed++
	}
	if allowed != 2 {
		t.Errorf("after 10 requests: %d retries, want 2", allowed)
	}
	// The floor: 2 per second without any request.
	allowed = 0
	for b.allow(now.Add(1500*time.Millisecond), &p) {
		allowed++
	}
	if allowed != 3 {
		t.Errorf("after 1.5 s: %d retries, want 3", allowed)
	}
	if b.denied.Load() != 4 || b.retried.Load() != int64(2*(RetryBudgetBurst+2)+5) {
		t.Errorf("counted %d denied, %d retried", b.denied.Load(), b.retried.Load())
	}
}
