package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	lo     = net.Interface{Index: 1, Name: "lo", Flags: net.FlagUp | net.FlagLoopback}
	loDown = net.Interface{Index: 1, Name: "lo", Flags: net.FlagLoopback}
	eth0   = net.Interface{Index: 2, Name: "eth0", Flags: net.FlagUp | net.FlagBroadcast | net.FlagRunning}
	eth1   = net.Interface{Index: 3, Name: "eth1", Flags: net.FlagUp | net.FlagBroadcast}
	// The kernel's fallback tunnel devices, down, in every namespace once
	// the ipip/sit modules are loaded.
	tunl0     = net.Interface{Index: 4, Name: "tunl0", Flags: net.FlagPointToPoint}
	sit0      = net.Interface{Index: 5, Name: "sit0", Flags: 0}
	eth0Down  = net.Interface{Index: 2, Name: "eth0", Flags: net.FlagBroadcast}
	loAndEth0 = []net.Interface{lo, eth0}
	loOnly    = []net.Interface{lo}
)

func TestAppWatch(t *testing.T) {
	tests := []struct {
		name  string
		looks [][]net.Interface
		want  []bool // gone, after each look
	}{
		{"loopback only from the start: never gone (dev run, unit test)",
			[][]net.Interface{loOnly, loOnly, loOnly, {loDown}, nil}, []bool{false, false, false, false, false}},
		{"the app's interface goes: gone on the second look without it",
			[][]net.Interface{loAndEth0, loAndEth0, loOnly, loOnly}, []bool{false, false, false, true}},
		{"an interface that comes later counts too",
			[][]net.Interface{loOnly, loOnly, loAndEth0, loOnly, loOnly}, []bool{false, false, false, false, true}},
		{"a link gone for one look only (flipped down and up): not gone",
			[][]net.Interface{loAndEth0, loOnly, loAndEth0, loOnly, loAndEth0}, []bool{false, false, false, false, false}},
		{"one of two interfaces goes: not gone",
			[][]net.Interface{{lo, eth0, eth1}, {lo, eth1}, {lo, eth1}, {lo, eth1}}, []bool{false, false, false, false}},
		{"down fallback tunnel devices stay behind: gone all the same",
			[][]net.Interface{{lo, eth0, tunl0, sit0}, {lo, tunl0, sit0}, {lo, tunl0, sit0}}, []bool{false, false, true}},
		{"the app's interface is left down: gone",
			[][]net.Interface{loAndEth0, {lo, eth0Down}, {lo, eth0Down}}, []bool{false, false, true}},
		{"a namespace with down interfaces only from the start: never gone",
			[][]net.Interface{{lo, tunl0}, {lo, eth0Down}, {lo, eth0Down}}, []bool{false, false, false}},
		{"even loopback gone (nothing listed)",
			[][]net.Interface{loAndEth0, nil, nil}, []bool{false, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w appWatch
			for i, ifs := range tt.looks {
				if got := w.look(ifs); got != tt.want[i] {
					t.Errorf("look %d (%v): gone=%v, want %v", i, names(ifs), got, tt.want[i])
				}
			}
		})
	}
}

func names(ifs []net.Interface) string {
	var n []string
	for _, i := range ifs {
		n = append(n, i.Name)
	}
	return strings.Join(n, ",")
}

// fakeLister plays back listings, repeating the last one, and can fail.
type fakeLister struct {
	mu    sync.Mutex
	looks [][]net.Interface
	errs  []error
	calls int
}

func (f *fakeLister) list() ([]net.Interface, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := min(f.calls, len(f.looks)-1)
	f.calls++
	var err error
	if i < len(f.errs) {
		err = f.errs[i]
	}
	if err != nil {
		return nil, err
	}
	return f.looks[i], nil
}

func TestWatchAppStopsWithTheReason(t *testing.T) {
	f := &fakeLister{
		looks: [][]net.Interface{loAndEth0, nil, loOnly, loOnly},
		errs:  []error{nil, errors.New("netlink: no buffer space"), nil, nil},
	}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, stop := context.WithCancelCause(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchApp(ctx, f.list, time.Millisecond, log, stop)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watchApp did not return after the interfaces went")
	}
	cause := context.Cause(ctx)
	if !errors.Is(cause, errAppGone) || !strings.Contains(cause.Error(), "eth0") {
		t.Errorf("cause %v; want errAppGone naming eth0", cause)
	}
	// A failed listing counts neither way: gone after two looks that
	// succeeded and found only loopback.
	if f.calls != 4 {
		t.Errorf("gone after %d looks; want 4 (one up, one failed, two without)", f.calls)
	}
	if n := strings.Count(logs.String(), "the app is gone"); n != 1 || !strings.Contains(logs.String(), "had=eth0") {
		t.Errorf("want one line saying why, naming eth0; log:\n%s", logs.String())
	}
}

func TestWatchAppEndsWithItsContext(t *testing.T) {
	f := &fakeLister{looks: [][]net.Interface{loOnly}}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchApp(ctx, f.list, time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), func(error) { stopped = true })
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watchApp did not return when its context ended")
	}
	if stopped {
		t.Error("a namespace on loopback alone stopped meshlet")
	}
}
