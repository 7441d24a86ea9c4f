package upstream

import (
	"net"
	"net/netip"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestClientIPForXFF(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		client netip.Addr
		remote string
		want   string
	}{
		{netip.MustParseAddr("10.77.0.4"), "127.0.0.1:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "127.0.0.9:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "[::1]:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "[::ffff:127.0.0.1]:4711", "10.77.0.4"},
		{netip.MustParseAddr("fd00::4"), "127.0.0.1:4711", "fd00::4"},
		{netip.MustParseAddr("::ffff:10.77.0.4"), "127.0.0.1:4711", "10.77.0.4"},
		// Not over loopback: the connection's own address is the app's.
		{netip.MustParseAddr("10.77.0.4"), "10.77.0.5:4711", "10.77.0.5"},
		{netip.MustParseAddr("10.77.0.4"), "[::ffff:10.77.0.5]:4711", "10.77.0.5"},
		// No ClientAddr: as before.
		{netip.Addr{}, "127.0.0.1:4711", "127.0.0.1"},
		{netip.Addr{}, "[::1]:4711", "::1"},
	} {
		m, err := New(Config{ClientAddr: tc.client, Consul: client})
		if err != nil {
			t.Fatal(err)
		}
		if got := m.ClientIP(tc.remote); got != tc.want {
			t.Errorf("ClientAddr %v, RemoteAddr %s: net/http path names %q, want %q", tc.client, tc.remote, got, tc.want)
		}
		remote := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.remote))
		if got := string(m.AppendClientIP(nil, remote)); got != tc.want {
			t.Errorf("ClientAddr %v, RemoteAddr %s: forwarder names %q, want %q", tc.client, tc.remote, got, tc.want)
		}
		if n := testing.AllocsPerRun(100, func() { m.AppendClientIP(make([]byte, 0, 64)[:0], remote) }); n > 1 {
			t.Errorf("AppendClientIP allocates %v times", n) // the one is the make
		}
	}
}
