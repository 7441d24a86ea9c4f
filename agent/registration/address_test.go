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

// TestCheckTemplate: mistakes that text/template finds only when the
// address is evaluated stop meshlet at start-up, with the reason.
func TestCheckTemplate(t *testing.T) {
	tests := []struct {
		tmpl    string
		wantErr string // empty: valid
	}{
		{DefaultAddressTemplate, ""},
		{`{{ GetInterfaceIP "eth0" }}`, ""},
		{`{{ GetAllInterfaces | include "flags" "forwardable" | sort "default,type,size" | limit 1 | attr "address" }}`, ""},
		{`{{ GetPrivateIP | include "name" "lo" }}`, `include takes interface addresses piped in, not a string`},
		{`{{ GetAllInterfaces | limit "1" | attr "address" }}`, `argument 1 of limit: want a non-negative integer, got a string ("1")`},
		{`{{ GetInterfaceIP }}`, `GetInterfaceIP takes 1 argument, got 0`},
		{`{{ GetInterfaceIP "eth0" "eth1" }}`, `GetInterfaceIP takes 1 argument, got 2`},
		{`{{ NoSuchFunction }}`, `is not a go-sockaddr template: function "NoSuchFunction" is not a go-sockaddr template function (at byte 3)`},
		{`{{ GetInterfaceIP "eth0 }}`, `is not a go-sockaddr template: unterminated quoted string (at byte 18)`},
		{`{{ range GetAllInterfaces }}{{ . }}{{ end }}`, `uses a go-sockaddr template feature meshlet does not evaluate: the "range" action is not supported`},
	}
	for _, tt := range tests {
		err := CheckTemplate(tt.tmpl)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CheckTemplate(%q) = %v; want nil", tt.tmpl, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), `"`)):
			t.Errorf("CheckTemplate(%q) = %v; want an error with %q", tt.tmpl, err, tt.wantErr)
		}
	}
}
