package upstream

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

func endpointsN(n int) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{ID: fmt.Sprintf("id-%d", i), Node: "n", Addr: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: 1, Status: "passing"}
	}
	return eps
}

func weighted(weights ...int) []Endpoint {
	eps := endpointsN(len(weights))
	for i, w := range weights {
		eps[i].Weight = w
	}
	return eps
}

func TestRoundRobin(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sets  []int // set size for each pick
		wantN []int // index picked, -1 for none
	}{
		{"empty set picks nothing", []int{0, 0}, []int{-1, -1}},
		{"one endpoint always", []int{1, 1, 1}, []int{0, 0, 0}},
		{"three in turn", []int{3, 3, 3, 3, 3}, []int{0, 1, 2, 0, 1}},
		{"counter survives a new set", []int{2, 2, 3, 3, 3}, []int{0, 1, 2, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := NewRoundRobin()
			for i, size := range tc.sets {
				set := newEndpointSet(endpointsN(size))
				got, ok := rr.Select(set, nil)
				want := tc.wantN[i]
				if want < 0 {
					if ok {
						t.Errorf("pick %d = %v, want none", i, got)
					}
					continue
				}
				if !ok || got != want {
					t.Errorf("pick %d = %v %v, want %v", i, got, ok, want)
				}
			}
		})
	}
	var nilSet *EndpointSet
	if _, ok := NewRoundRobin().Select(nilSet, nil); ok {
		t.Error("picked from a nil set")
	}
}

func TestRoundRobinSkipsUnusable(t *testing.T) {
	set := newEndpointSet(endpointsN(3))
	rr := NewRoundRobin()
	var got []int
	for range 6 {
		i, ok := rr.Select(set, func(i int) bool { return i != 1 })
		if !ok {
			t.Fatal("no pick")
		}
		got = append(got, i)
	}
	if slices.Contains(got, 1) || !slices.Contains(got, 0) || !slices.Contains(got, 2) {
		t.Errorf("picks = %v, want 0 and 2 only", got)
	}
	if _, ok := rr.Select(set, func(int) bool { return false }); ok {
		t.Error("picked although nothing is usable")
	}
}

func TestWeightedOrder(t *testing.T) {
	for _, tc := range []struct {
		weights []int
		want    []int32 // nil: plain order
	}{
		{[]int{1, 1, 1}, nil},
		{[]int{5, 5}, nil},
		{[]int{2, 1}, []int32{0, 1, 0}},
		{[]int{4, 2}, []int32{0, 1, 0}}, // divided by the gcd
		{[]int{5, 1, 1}, []int32{0, 0, 1, 0, 2, 0, 0}},
		{[]int{0, 2}, []int32{1, 0, 1}}, // 0 counts as 1
	} {
		got := weightedOrder(weighted(tc.weights...))
		if !slices.Equal(got, tc.want) {
			t.Errorf("weights %v: order %v, want %v", tc.weights, got, tc.want)
		}
	}
	huge := weightedOrder(weighted(1_000_000, 1, 3))
	if len(huge) > maxOrderLen || !slices.Contains(huge, 1) || !slices.Contains(huge, 2) {
		t.Errorf("huge weights: %d long, want at most %d and every endpoint in it", len(huge), maxOrderLen)
	}
}

func TestWeightedRoundRobinShares(t *testing.T) {
	set := newEndpointSet(weighted(3, 1))
	rr := NewRoundRobin()
	counts := map[int]int{}
	for range 400 {
		i, _ := rr.Select(set, nil)
		counts[i]++
	}
	if counts[0] != 300 || counts[1] != 100 {
		t.Errorf("counts = %v, want 300 and 100", counts)
	}
}

func TestLeastRequestAvoidsBusyInstances(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		active  []int64
		// want[i] is the expected share of picks, within 0.05.
		want []float64
	}{
		{"idle equal instances share evenly", []int{1, 1, 1}, []int64{0, 0, 0}, []float64{1. / 3, 1. / 3, 1. / 3}},
		// With two choices the busiest of three is picked only when drawn
		// against nothing busier: never.
		{"the busiest is never picked", []int{1, 1, 1}, []int64{0, 5, 10}, []float64{2. / 3, 1. / 3, 0}},
		{"weight counts: 2 in flight at weight 2 is lighter than 1 at weight 1", []int{2, 1}, []int64{2, 1}, []float64{1, 0}},
		{"one usable", []int{1}, []int64{9}, []float64{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := newEndpointSet(weighted(tc.weights...))
			for i, a := range tc.active {
				set.hosts[i].active.Store(a)
			}
			const n = 6000
			counts := make([]int, set.Len())
			for range n {
				i, ok := LeastRequest{}.Select(set, nil)
				if !ok {
					t.Fatal("no pick")
				}
				counts[i]++
			}
			for i, w := range tc.want {
				if got := float64(counts[i]) / n; math.Abs(got-w) > 0.05 {
					t.Errorf("endpoint %d got %.3f of the picks, want %.3f (counts %v)", i, got, w, counts)
				}
			}
		})
	}
	set := newEndpointSet(endpointsN(3))
	for range 100 {
		if i, ok := (LeastRequest{}).Select(set, func(i int) bool { return i == 2 }); !ok || i != 2 {
			t.Fatalf("with only 2 usable picked %d %v", i, ok)
		}
	}
	if _, ok := (LeastRequest{}).Select(set, func(int) bool { return false }); ok {
		t.Error("picked although nothing is usable")
	}
}

func TestSelectorsAreSafeConcurrently(t *testing.T) {
	set := newEndpointSet(weighted(1, 2, 3, 4))
	var wg sync.WaitGroup
	for _, sel := range []Selector{NewRoundRobin(), LeastRequest{}} {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 1000 {
					if _, ok := sel.Select(set, func(i int) bool { return set.available(i, 0) }); !ok {
						t.Error("no pick")
						return
					}
				}
			}()
		}
	}
	wg.Wait()
}

func BenchmarkRoundRobinPick(b *testing.B) {
	set := newEndpointSet(endpointsN(8))
	rr := NewRoundRobin()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := rr.Select(set, nil); !ok {
				b.Fatal("no pick")
			}
		}
	})
}

func BenchmarkLeastRequestPick(b *testing.B) {
	set := newEndpointSet(endpointsN(8))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := (LeastRequest{}).Select(set, nil); !ok {
				b.Fatal("no pick")
			}
		}
	})
}

func TestRoundRobinRetryLeavesTheTurns(t *testing.T) {
	set := newEndpointSet(endpointsN(3))
	rr := NewRoundRobin()
	var fresh []int
	for range 6 {
		i, _ := rr.Select(set, nil)
		fresh = append(fresh, i)
		// The retry of a failed attempt: any instance but the one tried.
		if j, ok := rr.Retry(set, func(j int) bool { return j != i }); !ok || j == i {
			t.Fatalf("retry after %d picked %d %v, want another instance", i, j, ok)
		}
	}
	if want := []int{0, 1, 2, 0, 1, 2}; !slices.Equal(fresh, want) {
		t.Errorf("fresh picks with retries between them = %v, want %v", fresh, want)
	}
	if _, ok := rr.Retry(newEndpointSet(nil), nil); ok {
		t.Error("retry picked from an empty set")
	}
}

func TestLeastRequestTies(t *testing.T) {
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		name       string
		slow, fast time.Duration // moving averages of instance 0 and 1
		age        time.Duration // how old both samples are
		wantSpread bool
	}{
		{"clearly faster wins every tie", 100 * time.Millisecond, time.Millisecond, 0, false},
		{"alike instances stay a coin toss", 2 * time.Millisecond, 1500 * time.Microsecond, 0, true},
		{"unmeasured instances stay a coin toss", 0, time.Millisecond, 0, true},
		{"stale measures stay a coin toss", 100 * time.Millisecond, time.Millisecond, latencyFresh + time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := newEndpointSet(endpointsN(2))
			for i, d := range []time.Duration{tc.slow, tc.fast} {
				set.hosts[i].latency.Store(int64(d))
				set.hosts[i].latencyAt.Store(now - int64(tc.age))
			}
			got := map[int]int{}
			for range 200 {
				i, _ := LeastRequest{}.Select(set, nil)
				got[i]++
			}
			if spread := got[0] > 0 && got[1] > 0; spread != tc.wantSpread {
				t.Errorf("picks = %v, want spread %v", got, tc.wantSpread)
			}
			if !tc.wantSpread && got[1] != 200 {
				t.Errorf("picks = %v, want all on the faster instance 1", got)
			}
		})
	}
}
