package vip

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestAssignIsStableAcrossTables(t *testing.T) {
	p := netip.MustParsePrefix("127.77.0.0/16")
	a, _ := NewTable(p)
	b, _ := NewTable(p)
	// Assign in opposite orders: a name's address must not depend on order.
	names := []string{"web", "api", "db", "cache", "auth"}
	got := map[string]netip.Addr{}
	for _, n := range names {
		v, err := a.Assign(n)
		if err != nil {
			t.Fatal(err)
		}
		got[n] = v
	}
	for i := len(names) - 1; i >= 0; i-- {
		v, _ := b.Assign(names[i])
		if v != got[names[i]] {
			t.Errorf("%s: %s in one table, %s in another", names[i], got[names[i]], v)
		}
	}
	for n, v := range got {
		if !p.Contains(v) {
			t.Errorf("%s: %s outside %s", n, v, p)
		}
		if name, ok := a.Lookup(v); !ok || name != n {
			t.Errorf("Lookup(%s) = %q, %v; want %q", v, name, ok, n)
		}
	}
}

func TestAssignAvoidsNetworkAndBroadcastAndCollides(t *testing.T) {
	// A /30 has two usable addresses: the third name must fail, and no name
	// may get .0 or .3.
	tb, err := NewTable(netip.MustParsePrefix("127.77.0.0/30"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i := 0; i < 2; i++ {
		a, err := tb.Assign(fmt.Sprintf("svc%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if a == netip.MustParseAddr("127.77.0.0") || a == netip.MustParseAddr("127.77.0.3") {
			t.Fatalf("assigned network or broadcast address %s", a)
		}
		if seen[a] {
			t.Fatalf("address %s assigned twice", a)
		}
		seen[a] = true
	}
	if _, err := tb.Assign("one-too-many"); err == nil {
		t.Fatal("expected an error when the range is full")
	}
	// A name already assigned still resolves when the range is full.
	if _, err := tb.Assign("svc0"); err != nil {
		t.Fatalf("re-assigning a known name: %v", err)
	}
}

func TestNewTableRejectsBadRanges(t *testing.T) {
	for _, p := range []string{"::1/128", "127.77.0.0/31", "127.77.0.0/32"} {
		if _, err := NewTable(netip.MustParsePrefix(p)); err == nil {
			t.Errorf("%s: expected error", p)
		}
	}
	if _, err := NewTable(netip.Prefix{}); err == nil {
		t.Error("zero prefix: expected error")
	}
}

func BenchmarkAssignKnown(b *testing.B) {
	tb, _ := NewTable(netip.MustParsePrefix("127.77.0.0/16"))
	tb.Assign("web")
	b.ReportAllocs()
	for b.Loop() {
		tb.Assign("web")
	}
}
