package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// blockingQuery runs one kind of Consul blocking query in a loop.
type blockingQuery[T any] struct {
	what string // names the query in logs, e.g. `health of "web"`
	// fetch asks Consul, blocking while waitIndex is still current.
	// waitIndex 0 means "answer at once".
	fetch func(ctx context.Context, waitIndex uint64) (result T, index uint64, err error)
	// waitTime is the WaitTime fetch sends with a waitIndex, and
	// callTimeout the deadline of a query that does not block: together
	// they bound every fetch (see fetchDeadline), so that a Consul that
	// accepts the connection and never answers fails the query as one
	// that refuses it does.
	waitTime, callTimeout time.Duration
	// live is told of every good answer, and aborts the fetch in flight
	// when Consul stops answering. Nil: neither.
	live *liveness
	// fromCache, optional, reports whether the answer fetch just returned
	// came from the agent's cache (?cached). Such an answer shows only
	// that the agent answers, not that it reaches its servers: it is not
	// told to live, so the liveness check keeps asking (see
	// liveness.cachedAnswer).
	fromCache func() bool
	// answered is told of every good answer, before apply, with the number
	// of failures just before it (0 when there was no outage). Optional.
	answered func(afterFailures int)
	// lostState, optional, is told before apply when the first answer
	// after a failure streak has an index lower than the last one before
	// it: the evidence that Consul lost its state (a restarted dev agent,
	// a snapshot restore). A leader election or a partition keeps the
	// index; a stale read from a lagging server may lower it a little,
	// but only without an outage.
	lostState func()
	// apply receives every answer whose index differs from the last one.
	apply func(T)
	// failed receives every error, for readiness reasons, with the length
	// of the failure streak so far.
	failed  func(err error, streak int)
	backoff func(attempt int) time.Duration
	log     *slog.Logger
}

// run queries until ctx is done. The index rules follow Consul's advice
// for blocking queries: never block on index 0, restart from 0 when the
// index goes backwards (a Consul restart or snapshot restore) and skip
// answers whose index did not move.
func (q *blockingQuery[T]) run(ctx context.Context) {
	var (
		waitIndex uint64 // sent with the next query
		lastIndex uint64 // of the last applied answer
		failures  int
	)
	for ctx.Err() == nil {
		result, index, err := q.call(ctx, waitIndex)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			q.failed(err, failures)
			if failures == 1 {
				// Info: the mesh warns once per outage, whichever query fails first.
				q.log.Info("consul query failed, retrying with backoff; keeping the last answer", "query", q.what, "err", err)
			} else {
				q.log.Debug("consul query failed again", "query", q.what, "err", err, "failures", failures)
			}
			// Ask without blocking next time: after an outage Consul may
			// have restarted with a lower index, and blocking on ours
			// would hold the answer back for a whole WaitTime.
			waitIndex = 0
			if !sleepCtx(ctx, q.backoff(failures)) {
				return
			}
			continue
		}
		if q.fromCache == nil || !q.fromCache() {
			q.live.answered(time.Now())
		}
		if failures > 0 {
			q.log.Info("consul answers again", "query", q.what, "failures", failures)
		}
		if q.answered != nil {
			q.answered(failures)
		}
		afterOutage := failures > 0
		failures = 0
		if index == 0 {
			// Index 0 would turn the next query into a non-blocking one,
			// and the loop into a busy one.
			index = 1
		}
		switch {
		case index < lastIndex:
			q.log.Debug("consul index went backwards, restarting the watch", "query", q.what, "from", lastIndex, "to", index)
			waitIndex, lastIndex = 0, 0
			if afterOutage && q.lostState != nil {
				q.lostState()
			}
			q.apply(result)
		case index == lastIndex:
			waitIndex = index
		default:
			waitIndex, lastIndex = index, index
			q.apply(result)
		}
	}
}

// call runs one fetch within its deadline. A fetch that ran out of time,
// or that the liveness check aborted, fails with an error that says so
// rather than "context canceled".
func (q *blockingQuery[T]) call(ctx context.Context, waitIndex uint64) (T, uint64, error) {
	cctx, cancel := q.live.callContext(ctx, fetchDeadline(waitIndex, q.waitTime, q.callTimeout))
	defer cancel()
	result, index, err := q.fetch(cctx, waitIndex)
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		err = fmt.Errorf("%s: %w", q.what, context.Cause(cctx))
	}
	return result, index, err
}

// fetchDeadline is how long one query may take. One that does not block
// (waitIndex 0) gets callTimeout. A blocking one gets its wait, plus the
// up to wait/16 that Consul adds to it as jitter, plus callTimeout for
// the answer to come back.
func fetchDeadline(waitIndex uint64, wait, callTimeout time.Duration) time.Duration {
	if callTimeout <= 0 {
		callTimeout = DefaultCallTimeout // never no deadline, nor one that fails every query at once
	}
	if waitIndex == 0 {
		return callTimeout
	}
	return wait + wait/16 + callTimeout
}

// sleepCtx waits d or until ctx is done, and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// liveness tells a Consul that hangs (it accepts connections and never
// answers: a stopped process, a paused container, a network that drops
// packets) from one that merely has no change to report. A blocking query
// looks the same in both cases for up to its whole wait; so when nothing
// has answered for PingEvery, a cheap question with a short deadline
// asks, and silence aborts every query in flight. The watches then fail
// and retry as they do when Consul is down, and meshlet goes fail-static.
// The zero value is ready to use; a nil *liveness does nothing.
type liveness struct {
	lastOK atomic.Int64 // unix ns of Consul's last good answer; 0 before any
	// down holds the liveness check's error from its failure until it, or
	// a query answered by the servers, succeeds; nil while Consul answers.
	// While it is set, an answer from the agent's cache is no answer.
	down atomic.Pointer[error]

	mu  sync.Mutex
	gen context.Context // done when an abort ends the calls in flight
	end context.CancelCauseFunc
}

// answered records a good answer of Consul at t.
func (l *liveness) answered(t time.Time) {
	if l == nil {
		return
	}
	l.down.Store(nil)
	for {
		old := l.lastOK.Load()
		if old >= t.UnixNano() || l.lastOK.CompareAndSwap(old, t.UnixNano()) {
			return
		}
	}
}

// cachedAnswer checks an answer of the agent's cache (q.UseCache): it is
// the agent's last word from its servers, good to route on, but the agent
// gives it as readily when it has lost them (a partition), and its age
// (X-Cache/Age) stays above zero for up to 30 s after it found them again
// (a leader lost). So the liveness check, which the servers answer,
// decides: while it fails, a cached answer is a failure. Nil for any
// other answer.
func (l *liveness) cachedAnswer(q *api.QueryOptions, meta *api.QueryMeta) error {
	if l == nil || !q.UseCache {
		return nil
	}
	down := l.down.Load()
	if down == nil {
		return nil
	}
	age := ""
	if meta != nil && meta.CacheAge > 0 {
		age = fmt.Sprintf(" (not refreshed for %v)", meta.CacheAge.Round(time.Millisecond))
	}
	return fmt.Errorf("the consul agent answers only from its cache%s: it cannot reach its servers (%w)", age, *down)
}

// lastAnswer returns when Consul last answered well; zero before any.
func (l *liveness) lastAnswer() time.Time {
	if l == nil || l.lastOK.Load() == 0 {
		return time.Time{}
	}
	return time.Unix(0, l.lastOK.Load())
}

// since returns when Consul last answered well, or now before any answer:
// the start of a failure streak, as far as anyone can know.
func (l *liveness) since(now time.Time) int64 {
	if t := l.lastAnswer(); !t.IsZero() && t.Before(now) {
		return t.UnixNano()
	}
	return now.UnixNano()
}

func (l *liveness) generation() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen == nil {
		l.gen, l.end = context.WithCancelCause(context.Background())
	}
	return l.gen
}

// abort ends every call in flight with cause; calls made afterwards run.
func (l *liveness) abort(cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.end != nil {
		l.end(cause)
	}
	l.gen, l.end = context.WithCancelCause(context.Background())
}

// callContext returns the context of one call to Consul: done after d, or
// when an abort ends the calls in flight, with the reason as its cause.
func (l *liveness) callContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	timed, cancelTimed := context.WithTimeoutCause(ctx, d, fmt.Errorf("no answer from consul within %v", d))
	if l == nil {
		return timed, cancelTimed
	}
	cctx, cancel := context.WithCancelCause(timed)
	gen := l.generation()
	stop := context.AfterFunc(gen, func() { cancel(context.Cause(gen)) })
	return cctx, func() {
		stop()
		cancel(nil)
		cancelTimed()
	}
}

// run asks Consul whenever it has not answered for every, until ctx is
// done. ping is the question; an answer of any kind, even an error status,
// shows that Consul does not hang (the watches see their own errors). No
// answer within timeout aborts the calls in flight, and so does every
// further silence, asked every `every`, until Consul answers again.
//
// changed, when not nil, is told when the check starts failing (with its
// error) and when it passes again (nil).
func (l *liveness) run(ctx context.Context, ping func(context.Context) error, every, timeout time.Duration, log *slog.Logger, changed func(down error)) {
	silent := false
	for {
		if last := l.lastAnswer(); !last.IsZero() && !silent {
			if wait := time.Until(last.Add(every)); wait > 0 {
				if !sleepCtx(ctx, wait) {
					return
				}
				continue
			}
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		err := ping(pctx)
		timedOut := pctx.Err() != nil // before cancel, which ends pctx too
		cancel()
		if ctx.Err() != nil {
			return
		}
		var status api.StatusError
		isStatus := errors.As(err, &status)
		switch {
		case err == nil:
			l.answered(time.Now())
		case isStatus && status.Code < 500:
			// Consul answers, if with an error: it does not hang.
			l.down.Store(nil)
		case l.lastAnswer().After(start):
			// A query answered while the ping waited: a slow Consul, not a
			// hung one. Aborting would send every watch back at once.
		default:
			// No answer, or a 5xx: a client agent that cannot reach its
			// servers answers the ping at once with an error, while the
			// blocking queries it forwarded wait on a dead connection.
			switch {
			case timedOut:
				err = fmt.Errorf("consul does not answer: no answer to a liveness check within %v", timeout)
			case isStatus:
				err = fmt.Errorf("consul does not answer: the agent fails its liveness check (%w)", err)
			default:
				err = fmt.Errorf("consul liveness check: %w", err)
			}
			if !silent {
				log.Warn("consul does not answer: ending the queries in flight, which retry as with a consul that is down",
					"err", err, "after", time.Since(start).Round(time.Millisecond))
			}
			if !silent && changed != nil {
				changed(err)
			}
			silent = true
			l.down.Store(&err)
			l.abort(err)
			if !sleepCtx(ctx, every) {
				return
			}
			continue
		}
		if silent {
			log.Info("consul answers its liveness check again")
			silent = false
			if changed != nil {
				changed(nil)
			}
		}
		if err != nil && !sleepCtx(ctx, every) {
			return
		}
	}
}
