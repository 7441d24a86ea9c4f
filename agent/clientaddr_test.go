package agent

import (
	"net/netip"
	"testing"
)

func TestPrimaryAddr(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	lo := ifaceAddrs{up: true, loopback: true, addrs: pfx("127.0.0.1/8", "::1/128")}
	for _, tc := range []struct {
		name   string
		ifaces []ifaceAddrs
		want   string
	}{
		{"eth0", []ifaceAddrs{lo, {up: true, addrs: pfx("10.77.0.4/24")}}, "10.77.0.4"},
		{"IPv4 before IPv6", []ifaceAddrs{lo, {up: true, addrs: pfx("fe80::1/64", "fd00::4/64", "172.18.0.3/16")}}, "172.18.0.3"},
		{"IPv6 only", []ifaceAddrs{lo, {up: true, addrs: pfx("fe80::1/64", "2001:db8::4/64")}}, "2001:db8::4"},
		{"down interface skipped", []ifaceAddrs{lo, {up: false, addrs: pfx("10.0.0.1/24")}, {up: true, addrs: pfx("10.0.0.2/24")}}, "10.0.0.2"},
		{"link-local only", []ifaceAddrs{lo, {up: true, addrs: pfx("169.254.1.1/16", "fe80::1/64")}}, "invalid IP"},
		{"loopback only", []ifaceAddrs{lo}, "invalid IP"},
		{"none", nil, "invalid IP"},
	} {
		if got := primaryAddr(tc.ifaces).String(); got != tc.want {
			t.Errorf("%s: primaryAddr = %s, want %s", tc.name, got, tc.want)
		}
	}
}
