package upstream

import (
	"context"
	"log/slog"
	"time"
)

// blockingQuery runs one kind of Consul blocking query in a loop.
type blockingQuery[T any] struct {
	what string // names the query in logs, e.g. `health of "web"`
	// fetch asks Consul, blocking while waitIndex is still current.
	// waitIndex 0 means "answer at once".
	fetch func(ctx context.Context, waitIndex uint64) (result T, index uint64, err error)
	// answered is told of every good answer, before apply, with the number
	// of failures just before it (0 when there was no outage). Optional.
	answered func(afterFailures int)
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
		result, index, err := q.fetch(ctx, waitIndex)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			q.failed(err, failures)
			if failures == 1 {
				q.log.Warn("consul query failed, retrying with backoff; keeping the last answer", "query", q.what, "err", err)
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
		if failures > 0 {
			q.log.Info("consul answers again", "query", q.what, "failures", failures)
		}
		if q.answered != nil {
			q.answered(failures)
		}
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
			q.apply(result)
		case index == lastIndex:
			waitIndex = index
		default:
			waitIndex, lastIndex = index, index
			q.apply(result)
		}
	}
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
