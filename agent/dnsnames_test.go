package agent

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
	"github.com/meshlet/meshlet/vip"
)

// A PTR question answers only from the VIP table's assignments: the home
// address of a service nobody asked for yet is nobody's VIP, and asking
// for it assigns nothing (it runs on the DNS read loop).
func TestLookupNameAnswersOnlyAssignedVIPs(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web", "api")
	m := upstreamtest.NewMesh(t, fc, nil)
	upstreamtest.Eventually(t, "the catalog", func() bool { return slices.Contains(m.ServiceNames(), "api") })
	vips, err := vip.NewTable(netip.MustParsePrefix("127.77.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	s := services{a: &Agent{vips: vips, mesh: m}}
	ctx := context.Background()

	web := vips.Home("web")
	if name, ok := s.LookupName(ctx, web); ok {
		t.Errorf("PTR of web's unassigned home address %v: %q, want none", web, name)
	}
	if got := vips.Snapshot(); len(got) != 0 {
		t.Errorf("a PTR question assigned VIPs: %v", got)
	}
	assigned, err := vips.Assign("web")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr netip.Addr
		want string
	}{
		{assigned, "web"},
		{vips.Home("api"), ""},
		{netip.MustParseAddr("192.0.2.1"), ""},
	} {
		name, ok := s.LookupName(ctx, tc.addr)
		if name != tc.want || ok != (tc.want != "") {
			t.Errorf("PTR of %v: %q %v, want %q", tc.addr, name, ok, tc.want)
		}
	}
}
