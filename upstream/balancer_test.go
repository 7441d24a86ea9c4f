package upstream

import (
	"fmt"
	"testing"
)

func endpointsN(n int) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{ID: fmt.Sprintf("id-%d", i), Node: "n", Addr: fmt.Sprintf("10.0.0.%d:80", i+1)}
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
				e, ok := rr.Select(set, nil)
				want := tc.wantN[i]
				if want < 0 {
					if ok {
						t.Errorf("pick %d = %v, want none", i, e)
					}
					continue
				}
				if !ok || e.ID != set.At(want).ID {
					t.Errorf("pick %d = %v %v, want %v", i, e.ID, ok, set.At(want).ID)
				}
			}
		})
	}
	var nilSet *EndpointSet
	if _, ok := NewRoundRobin().Select(nilSet, nil); ok {
		t.Error("picked from a nil set")
	}
}

func TestEndpointSetAfter(t *testing.T) {
	set := newEndpointSet(endpointsN(3))
	for i := range 3 {
		got, ok := set.after(set.At(i))
		if want := set.At((i + 1) % 3); !ok || got.ID != want.ID {
			t.Errorf("after(%s) = %s %v, want %s", set.At(i).ID, got.ID, ok, want.ID)
		}
	}
	if _, ok := newEndpointSet(endpointsN(1)).after(Endpoint{ID: "id-0", Node: "n"}); ok {
		t.Error("a set of one has a different next endpoint")
	}
	gone := Endpoint{ID: "gone", Addr: "10.9.9.9:80"}
	if got, ok := set.after(gone); !ok || got.Addr == gone.Addr {
		t.Errorf("after an endpoint no longer in the set = %v %v, want another one", got, ok)
	}
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
