package upstream

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestConnectTimedOut(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&dialError{err: context.DeadlineExceeded}, true},
		{&dialError{err: &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}}, true},
		{&dialError{err: ErrTryTimeout}, true},
		{&dialError{err: syscall.ECONNREFUSED}, false},
		{&dialError{err: syscall.EHOSTUNREACH}, false},
		{ErrTryTimeout, false}, // the answer was late, not the connection
		{fmt.Errorf("wrapped: %w", &dialError{err: context.DeadlineExceeded}), true},
		{nil, false},
	} {
		if got := connectTimedOut(tc.err); got != tc.want {
			t.Errorf("connectTimedOut(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestLogLimit(t *testing.T) {
	var l logLimit
	now := time.Unix(1000, 0)
	if n, ok := l.allow(now); !ok || n != 0 {
		t.Fatalf("first line: %d %v, want let through", n, ok)
	}
	for i := range 3 {
		if _, ok := l.allow(now.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("line %d within %v let through", i, logEvery)
		}
	}
	if n, ok := l.allow(now.Add(logEvery)); !ok || n != 3 {
		t.Errorf("line after %v: %d %v, want let through with 3 held back", logEvery, n, ok)
	}
}
