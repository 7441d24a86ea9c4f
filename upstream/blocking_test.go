package upstream

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestFetchDeadline(t *testing.T) {
	for _, tc := range []struct {
		name       string
		waitIndex  uint64
		wait, call time.Duration
		want       time.Duration
	}{
		{"a query that does not block gets the call timeout", 0, 5 * time.Minute, 5 * time.Second, 5 * time.Second},
		{"a blocking one its wait, Consul's jitter and the call timeout", 42, 5 * time.Minute, 5 * time.Second, 5*time.Minute + 18750*time.Millisecond + 5*time.Second},
		{"short waits too", 1, 16 * time.Second, time.Second, 18 * time.Second},
		{"no call timeout is the default one", 0, time.Minute, 0, DefaultCallTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fetchDeadline(tc.waitIndex, tc.wait, tc.call); got != tc.want {
				t.Errorf("fetchDeadline(%d, %v, %v) = %v, want %v", tc.waitIndex, tc.wait, tc.call, got, tc.want)
			}
		})
	}
}

// A query Consul never answers fails at its deadline, as one Consul
// refuses does: first the one that does not block, then a blocking one.
func TestBlockingQueryFailsAtItsDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type attempt struct {
		waitIndex uint64
		deadline  time.Duration // left when the fetch began
		took      time.Duration
		err       error
	}
	attempts := make(chan attempt, 10)
	calls := 0
	q := &blockingQuery[int]{
		what:        "test query",
		waitTime:    160 * time.Millisecond,
		callTimeout: 100 * time.Millisecond,
		fetch: func(ctx context.Context, waitIndex uint64) (int, uint64, error) {
			calls++
			if calls == 2 {
				return 1, 7, nil // one answer, so that the next query blocks
			}
			d, _ := ctx.Deadline()
			left := time.Until(d)
			<-ctx.Done() // a Consul that never answers
			attempts <- attempt{waitIndex: waitIndex, deadline: left}
			return 0, 0, ctx.Err()
		},
		apply:   func(int) {},
		backoff: func(int) time.Duration { return 0 },
		log:     testLogger(t),
	}
	var errs []error
	q.failed = func(err error, _ int) {
		errs = append(errs, err)
		if len(errs) == 2 {
			cancel()
		}
	}
	start := time.Now()
	q.run(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("two unanswered queries took %v", took)
	}
	close(attempts)
	var got []attempt
	for a := range attempts {
		got = append(got, a)
	}
	if len(got) != 2 || len(errs) != 2 {
		t.Fatalf("attempts %+v, errors %v; want two of each", got, errs)
	}
	for i, want := range []struct {
		waitIndex uint64
		deadline  time.Duration
	}{{0, 100 * time.Millisecond}, {7, 270 * time.Millisecond}} {
		if got[i].waitIndex != want.waitIndex || got[i].deadline > want.deadline || got[i].deadline < want.deadline-150*time.Millisecond {
			t.Errorf("attempt %d: index %d with %v left, want index %d with %v", i, got[i].waitIndex, got[i].deadline, want.waitIndex, want.deadline)
		}
		if !strings.Contains(errs[i].Error(), "test query: no answer from consul within") {
			t.Errorf("error %d = %v, want it to say consul did not answer", i, errs[i])
		}
	}
}

// The liveness check asks Consul only when nothing answered for a while,
// and a silence ends every call in flight with a reason; calls made
// afterwards run on.
func TestLivenessAbortsCallsInFlightWhenConsulIsSilent(t *testing.T) {
	var l liveness
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hung := make(chan struct{})
	var pings atomic.Int64
	ping := func(ctx context.Context) error {
		pings.Add(1)
		select {
		case <-hung:
			<-ctx.Done()
			return ctx.Err()
		default:
			return nil
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(ctx, ping, 200*time.Millisecond, 100*time.Millisecond, testLogger(t), nil)
	}()
	defer func() { cancel(); <-done }()

	eventually(t, "a first answer", func() bool { return !l.lastAnswer().IsZero() })
	// Answers from the watches keep the check quiet.
	before := pings.Load()
	for range 60 {
		l.answered(time.Now())
		time.Sleep(10 * time.Millisecond)
	}
	if n := pings.Load() - before; n > 1 {
		t.Errorf("%d liveness checks in 600 ms while queries answered every 10 ms, want at most 1 (3 unasked)", n)
	}

	call, stop := l.callContext(context.Background(), time.Hour)
	defer stop()
	close(hung)
	last := l.lastAnswer()
	start := time.Now()
	select {
	case <-call.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a call in flight outlived a silent Consul")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the silence ended the call after %v, want about 300 ms (every + timeout)", took)
	}
	if cause := context.Cause(call); cause == nil || !strings.Contains(cause.Error(), "consul does not answer") {
		t.Errorf("cause = %v, want it to say consul does not answer", cause)
	}
	if !l.lastAnswer().Equal(last) {
		t.Error("the last answer moved while Consul was silent")
	}
	if got := time.Unix(0, l.since(time.Now())); !got.Equal(last) {
		t.Errorf("a failure streak starting now would date from %v, want the last answer %v", got, last)
	}
	cancel() // no further check, whose abort would end the fresh call too
	<-done
	fresh, stopFresh := l.callContext(context.Background(), time.Hour)
	defer stopFresh()
	if fresh.Err() != nil {
		t.Error("a call made after the abort was ended by it")
	}
}
