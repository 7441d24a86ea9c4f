// Package upstreamtest is the test kit of upstream and its front-ends: a
// fake Consul that blocks as the real one does, a running Mesh on it, a
// loopback front that hands accepted connections to a serve function,
// and the instances, clients and raw app connections the tests of
// several packages share. Tests only; the kit serves with whatever
// function it is given, so it imports no front-end.
package upstreamtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
)

// NewMesh returns a Mesh on fc, with short waits and retries, running
// until the test ends. tweak, when not nil, changes its Config first.
func NewMesh(t testing.TB, fc *FakeConsul, tweak func(*upstream.Config)) *upstream.Mesh {
	t.Helper()
	cfg := upstream.Config{
		Consul:             fc.Client(t),
		FirstAnswerTimeout: 2 * time.Second,
		WaitTime:           2 * time.Second,
		RetryBackoff:       func(int) time.Duration { return 5 * time.Millisecond },
		Logger:             Logger(t),
		PingEvery:          20 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := upstream.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	RunMesh(t, m)
	return m
}

// RunMesh runs m until the test ends. Cleanups registered after it (the
// front-ends' shutdown) run before it stops.
func RunMesh(t testing.TB, m *upstream.Mesh) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// Front stands for the agent's outbound listener: every connection
// accepted on a loopback port goes to a serve function.
type Front struct {
	Addr     string
	Accepted atomic.Int64
	Returned atomic.Int64 // serve calls that have returned
}

// Serve accepts connections on a loopback port until the test ends, and
// serves each with serve in a goroutine of its own, with a ctx that ends
// with the test.
func Serve(t testing.TB, serve func(ctx context.Context, c net.Conn)) *Front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := &Front{Addr: ln.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			f.Accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(ctx, c)
				f.Returned.Add(1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		wg.Wait()
	})
	return f
}

// DeadAddr returns a loopback address nothing listens on.
func DeadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Logger logs to t.Log, so logs show only for failing tests, and drops
// what stray goroutines log after the test.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// LevelCounter is a slog.Handler that counts records per level.
type LevelCounter struct {
	mu     sync.Mutex
	counts map[slog.Level]int
}

func (h *LevelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *LevelCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = map[slog.Level]int{}
	}
	h.counts[r.Level]++
	return nil
}
func (h *LevelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *LevelCounter) WithGroup(string) slog.Handler      { return h }

// Count is how many records of level l were logged.
func (h *LevelCounter) Count(l slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[l]
}
