package registration

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAddress(t *testing.T) {
	tests := []struct {
		tmpl    string
		want    netip.Addr
		wantErr string
	}{
		{"10.1.2.3", netip.MustParseAddr("10.1.2.3"), ""},
		{` {{ "fd00::7" }} `, netip.MustParseAddr("fd00::7"), ""},
		// Loopback always exists, so this works on any machine.
		{`{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | attr "address" }}`, netip.MustParseAddr("127.0.0.1"), ""},
		{`{{ GetInterfaceIP "^nosuch-if0$" }}`, netip.Addr{}, "matches no address"},
		{"", netip.Addr{}, "matches no address"},
		{"10.0.0.1 10.0.0.2", netip.Addr{}, "matches 2 addresses"},
		{"not-an-ip", netip.Addr{}, "not an IP address"},
		{"0.0.0.0", netip.Addr{}, "cannot connect to"},
		{"{{ GetPrivateIP", netip.Addr{}, "not a go-sockaddr template"},
		{"{{ NoSuchFunction }}", netip.Addr{}, "not a go-sockaddr template"},
	}
	for _, tt := range tests {
		got, err := Address(tt.tmpl)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("Address(%q) = %v, %v; want a one-line error with %q", tt.tmpl, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Address(%q) = %v, %v; want %v", tt.tmpl, got, err, tt.want)
		}
	}
	if err := CheckTemplate(DefaultAddressTemplate); err != nil {
		t.Errorf("the default template: %v", err)
	}
}
