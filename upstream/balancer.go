package upstream

import (
	"net/http"
	"sync/atomic"
)

// Selector picks the instance for a request or connection. Select must be
// safe for concurrent use and must not modify set. r is nil for raw TCP
// connections, so policies that look at requests (sticky cookies) need a
// fallback for it. ok is false only when set has no endpoint a request may
// go to.
//
// Each service gets its own Selector, so a policy's state (a counter,
// request counts) is per service.
type Selector interface {
	Select(set *EndpointSet, r *http.Request) (e Endpoint, ok bool)
}

// RoundRobin hands out the endpoints of a set in turn.
type RoundRobin struct {
	next atomic.Uint64
}

// NewRoundRobin returns a round-robin selector.
func NewRoundRobin() *RoundRobin {
	return &RoundRobin{}
}

// Select implements [Selector]. The counter survives changes of the set,
// so a new set does not send the next request of every sidecar to its
// first endpoint.
func (rr *RoundRobin) Select(set *EndpointSet, _ *http.Request) (Endpoint, bool) {
	n := set.Len()
	if n == 0 {
		return Endpoint{}, false
	}
	i := rr.next.Add(1) - 1
	return set.At(int(i % uint64(n))), true
}
