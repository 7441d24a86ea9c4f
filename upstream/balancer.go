package upstream

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Selector picks the instance for a request or connection. Select returns
// the index in set of an endpoint for which usable reports true (nil
// usable: any), and ok false when there is none. It must be safe for
// concurrent use and must not modify set; usable is how the caller leaves
// out ejected instances and those a request already tried, so a policy
// never needs to know why.
//
// Each service gets its own selectors, so a policy's state (a counter) is
// per service. Weights come from Consul (Weights.Passing) through the set.
//
// Retry picks for an attempt that failed: among the instances usable
// reports (the caller leaves out those tried), without taking a turn from
// the fresh requests. A retry that moved a shared counter would hand the
// next fresh request the turn of the instance that just failed: with two
// instances, one of them failing, nearly every request would meet the
// failing one first and spend the retry budget twice as fast.
type Selector interface {
	Select(set *EndpointSet, usable func(i int) bool) (i int, ok bool)
	Retry(set *EndpointSet, usable func(i int) bool) (i int, ok bool)
}

// RoundRobin hands out the endpoints of a set in turn, each as often as
// its weight says, interleaved (smooth weighted round-robin).
type RoundRobin struct {
	next atomic.Uint64
}

// NewRoundRobin returns a round-robin selector.
func NewRoundRobin() *RoundRobin {
	return &RoundRobin{}
}

// Select implements [Selector]. The counter survives changes of the set,
// so a new set does not send the next request of every sidecar to its
// first endpoint. An endpoint that is not usable passes its turn to the
// next one.
func (rr *RoundRobin) Select(set *EndpointSet, usable func(int) bool) (int, bool) {
	n := set.Len()
	if n == 0 {
		return -1, false
	}
	seq := uint64(n)
	if set.order != nil {
		seq = uint64(len(set.order))
	}
	return rr.walk(set, seq, rr.next.Add(1)-1, usable)
}

// Retry implements [Selector]: it walks from the turn the next fresh
// request will take, and leaves the counter alone.
func (rr *RoundRobin) Retry(set *EndpointSet, usable func(int) bool) (int, bool) {
	n := set.Len()
	if n == 0 {
		return -1, false
	}
	seq := uint64(n)
	if set.order != nil {
		seq = uint64(len(set.order))
	}
	return rr.walk(set, seq, rr.next.Load(), usable)
}

// walk returns the first usable endpoint of the sequence from start on.
func (rr *RoundRobin) walk(set *EndpointSet, seq, start uint64, usable func(int) bool) (int, bool) {
	for k := range seq {
		pos := (start + k) % seq
		i := int(pos)
		if set.order != nil {
			i = int(set.order[pos])
		}
		if usable == nil || usable(i) {
			return i, true
		}
	}
	return -1, false
}

// LeastRequest picks two usable endpoints at random (by weight) and takes
// the one with fewer requests in flight per unit of weight, or on a tie
// one whose answers came clearly faster lately: the "power of two choices",
// which avoids the herd that a plain least-request causes when many
// sidecars see the same counts.
type LeastRequest struct{}

// Select implements [Selector].
func (LeastRequest) Select(set *EndpointSet, usable func(int) bool) (int, bool) {
	n := set.Len()
	var buf [64]int
	cands := buf[:0]
	for i := range n {
		if usable == nil || usable(i) {
			cands = append(cands, i)
		}
	}
	switch len(cands) {
	case 0:
		return -1, false
	case 1:
		return cands[0], true
	}
	a := randomByWeight(set, cands, -1)
	b := randomByWeight(set, cands, a)
	wa, wb := int64(set.endpoints[a].Weight), int64(set.endpoints[b].Weight)
	// (active+1)/weight: the load each would have with this request, per
	// unit of weight, compared without division. On a tie, one that has
	// lately been answering in under half the time of the other wins:
	// with fast instances each holding a request as often as not, a slow
	// one would otherwise win half of its ties and get far more than its
	// share. Instances alike stay a coin toss, so idle traffic spreads.
	ha, hb := set.hosts[a], set.hosts[b]
	la := (ha.active.Load() + 1) * max(wb, 1)
	lb := (hb.active.Load() + 1) * max(wa, 1)
	if lb < la || (lb == la && clearlyFaster(hb, ha, time.Now().UnixNano())) {
		return b, true
	}
	return a, true
}

// Retry implements [Selector]: the same two choices among the instances
// not tried yet. Least-request keeps no turn to protect; the failed
// instance is left out by usable, and its in-flight count has dropped.
func (lr LeastRequest) Retry(set *EndpointSet, usable func(int) bool) (int, bool) {
	return lr.Select(set, usable)
}

// randomByWeight picks one of cands other than not, with probability
// proportional to its weight.
func randomByWeight(set *EndpointSet, cands []int, not int) int {
	if set.order == nil { // equal weights
		for {
			if i := cands[rand.N(len(cands))]; i != not {
				return i
			}
		}
	}
	total := 0
	for _, i := range cands {
		if i != not {
			total += max(set.endpoints[i].Weight, 1)
		}
	}
	r := rand.N(total)
	for _, i := range cands {
		if i == not {
			continue
		}
		if r -= max(set.endpoints[i].Weight, 1); r < 0 {
			return i
		}
	}
	return cands[0] // unreachable
}

// maxOrderLen bounds the weighted round-robin sequence of a set.
const maxOrderLen = 4096

// weightedOrder returns the smooth weighted round-robin sequence of eps
// (nginx's algorithm: each turn every endpoint gains its weight, the
// richest is picked and pays the total), or nil when all weights are
// equal. Weights are divided by their greatest common divisor and, when
// they still sum to more than maxOrderLen, scaled down.
func weightedOrder(eps []Endpoint) []int32 {
	if len(eps) < 2 {
		return nil
	}
	weights := make([]int, len(eps))
	g, total, equal := 0, 0, true
	for i, e := range eps {
		weights[i] = max(e.Weight, 1)
		g = gcd(g, weights[i])
		equal = equal && weights[i] == weights[0]
	}
	if equal {
		return nil
	}
	for i := range weights {
		weights[i] /= g
		total += weights[i]
	}
	if total > maxOrderLen {
		scaled := 0
		for i, w := range weights {
			weights[i] = max(1, int(int64(w)*int64(maxOrderLen-len(eps))/int64(total)))
			scaled += weights[i]
		}
		total = scaled
	}
	order := make([]int32, 0, total)
	current := make([]int, len(weights))
	for range total {
		best := 0
		for i, w := range weights {
			current[i] += w
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		order = append(order, int32(best))
	}
	return order
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
