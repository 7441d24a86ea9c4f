package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"
)

// errAppGone is the cause Run's stop context carries when the app's
// network namespace has lost its interfaces: the stop then skips the
// drain period (no caller can reach the app any more) and exits 0.
var errAppGone = errors.New("the app is gone")

const (
	// appLookEvery is how often the namespace's interfaces are listed:
	// one netlink dump, cheap enough to do every second.
	appLookEvery = time.Second
	// appGoneLooks is how many looks in a row must find no interface up
	// before the app counts as gone, so that a link flipped down and up
	// again between two looks does not end the sidecar. With
	// appLookEvery, the app's end is noticed 1–2 s after it.
	appGoneLooks = 2
	// appGoneDrain bounds the drain of in-flight requests once the app is
	// gone: the app that asked for them is gone, and the instances are out
	// of reach through the removed interfaces, so none can finish.
	appGoneDrain = time.Second
)

// appWatch decides, look by look, whether the app that shares meshlet's
// network namespace is gone. A sidecar runs in its app's namespace
// (network_mode: service:app); when the app's container stops, the
// runtime removes its interfaces and only loopback is left, in a
// namespace that meshlet alone keeps alive.
//
// The app counts as gone when some look found a non-loopback interface up
// and appGoneLooks looks in a row since have found none up. "Up" rather
// than "present", because a namespace can keep interfaces the app never
// had: the kernel adds down fallback devices (tunl0, sit0, ip6tnl0) to
// every namespace when the tunnel modules are loaded. A namespace that
// never had an interface up (a dev run or a test on loopback alone) never
// counts as gone.
type appWatch struct {
	had    []string // non-loopback interfaces up at the last look that found any
	misses int      // looks in a row, since had was set, that found none up
}

// look takes one listing of the namespace's interfaces and reports
// whether the app is gone.
func (w *appWatch) look(ifs []net.Interface) bool {
	var up []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && i.Flags&net.FlagUp != 0 {
			up = append(up, i.Name)
		}
	}
	if len(up) > 0 {
		slices.Sort(up)
		w.had, w.misses = up, 0
		return false
	}
	if w.had == nil {
		return false
	}
	w.misses++
	return w.misses >= appGoneLooks
}

// watchApp lists the namespace's interfaces every interval until ctx ends
// or the app is gone; then it logs why and calls stop with errAppGone, so
// that the stop takes the same path as after SIGTERM.
func watchApp(ctx context.Context, list func() ([]net.Interface, error), every time.Duration, log *slog.Logger, stop context.CancelCauseFunc) {
	var w appWatch
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		ifs, err := list()
		switch {
		case err != nil:
			// A failed listing is no evidence either way; say so once
			// per run of failures, not every second.
			if !failing {
				log.Warn("listing network interfaces to see whether the app is still there", "err", err)
			}
			failing = true
		case w.look(ifs):
			log.Info("the app is gone: no network interface but loopback is up in its namespace any more; stopping",
				"had", strings.Join(w.had, ","))
			stop(fmt.Errorf("%w: its network interfaces (%s) were removed", errAppGone, strings.Join(w.had, ",")))
			return
		default:
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
