package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newTestMesh returns a running Mesh on fc, stopped when the test ends.
func newTestMesh(t testing.TB, fc *fakeConsul, tweak func(*Config)) *Mesh {
	t.Helper()
	cfg := Config{
		Consul:             fc.client(t),
		FirstAnswerTimeout: 2 * time.Second,
		WaitTime:           2 * time.Second,
		// Long enough that a loaded machine never turns an app's late
		// first bytes into raw TCP; tests of server-first protocols set
		// their own.
		SniffTimeout: 2 * time.Second,
		RetryBackoff: func(int) time.Duration { return 5 * time.Millisecond },
		Logger:       testLogger(t),
		pingEvery:    20 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		m.Shutdown(sctx)
		cancel()
		<-done
	})
	return m
}

// proxyFront stands for the agent's outbound listener: every connection
// accepted on a loopback port goes to ServeConn for one service.
type proxyFront struct {
	addr     string
	accepted atomic.Int64
	returned atomic.Int64 // ServeConn calls that have returned
}

func serveMesh(t testing.TB, m *Mesh, service, host string) *proxyFront {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := &proxyFront{addr: ln.Addr().String()}
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
			f.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.ServeConn(ctx, c, service, host)
				f.returned.Add(1)
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

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// testLogger logs to t.Log, so logs show only for failing tests, and
// drops what stray goroutines log after the test.
func testLogger(t testing.TB) *slog.Logger {
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

// levelCounter is a slog.Handler that counts records per level.
type levelCounter struct {
	mu     sync.Mutex
	counts map[slog.Level]int
}

func (h *levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = map[slog.Level]int{}
	}
	h.counts[r.Level]++
	return nil
}
func (h *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *levelCounter) WithGroup(string) slog.Handler      { return h }
func (h *levelCounter) count(l slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[l]
}
