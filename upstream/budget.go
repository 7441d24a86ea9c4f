package upstream

import (
	"sync"
	"sync/atomic"
	"time"
)

// retryBudget limits a service's retries to a share of its requests plus
// a small floor per second, so that a failing service is not hammered by
// every request trying it three times. It is a token bucket: each request
// adds RetryBudget tokens, each second adds RetryMinPerSec, a retry takes
// one, and the bucket holds at most RetryBudgetBurst + RetryMinPerSec.
type retryBudget struct {
	requests atomic.Int64 // counted lock-free on the request path

	mu       sync.Mutex
	tokens   float64
	counted  int64 // requests already turned into tokens
	last     time.Time
	started  bool
	denied   atomic.Int64
	retried  atomic.Int64
	lastDeny atomic.Int64 // unix ns of the last denial, for rate-limited logs
}

// RetryBudgetBurst is how many retries a quiet service may spend at once.
const RetryBudgetBurst = 10

// request counts one request toward the budget.
func (b *retryBudget) request() { b.requests.Add(1) }

// allow takes a token for one retry, if there is one.
func (b *retryBudget) allow(now time.Time, p *Policy) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	capacity := RetryBudgetBurst + p.RetryMinPerSec
	reqs := b.requests.Load()
	if !b.started {
		// A new service starts with a full bucket: its first failures are
		// not the ones to refuse.
		b.started, b.tokens, b.counted, b.last = true, capacity, reqs, now
	}
	b.tokens += float64(reqs-b.counted) * p.RetryBudget
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens += dt.Seconds() * p.RetryMinPerSec
	}
	b.tokens = min(b.tokens, capacity)
	b.counted, b.last = reqs, now
	if b.tokens < 1 {
		b.denied.Add(1)
		return false
	}
	b.tokens--
	b.retried.Add(1)
	return true
}
