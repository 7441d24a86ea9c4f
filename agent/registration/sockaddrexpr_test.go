package registration

import (
	"fmt"
	"net"
	"strings"
	"testing"

	sockaddrtemplate "github.com/hashicorp/go-sockaddr/template"
)

// sameAsSockaddr lists templates meshlet evaluates itself; each must give
// exactly what go-sockaddr/template gives on the same machine, errors
// included. Together they call every function of go-sockaddr's template
// function maps.
var sameAsSockaddr = []string{
	// Consul-style sources and helpers.
	`{{ GetPrivateIP }}`,
	`{{ GetPrivateIPs }}`,
	`{{ GetPublicIP }}`,
	`{{ GetPublicIPs }}`,
	`{{ GetInterfaceIP "eth0" }}`,
	`{{ GetInterfaceIP "lo" }}`,
	`{{ GetInterfaceIP "^nosuch-if0$" }}`,
	`{{ GetInterfaceIPs "eth0" }}`,
	`{{ GetInterfaceIPs "." }}`,
	`{{ GetInterfaceIP "(" }}`,
	`{{ GetAllInterfaces }}`,
	`{{ GetDefaultInterfaces }}`,
	`{{ GetPrivateInterfaces }}`,
	`{{ GetPublicInterfaces }}`,
	`{{ . }}`,
	// Filters, sorts and helpers, as in Consul's documentation.
	`{{ GetAllInterfaces | include "name" "lo" | attr "address" }}`,
	`{{ GetAllInterfaces | include "flags" "forwardable" | include "flags" "up" | sort "default,type,size" | limit 1 | attr "address" }}`,
	`{{ GetPrivateInterfaces | include "type" "IPv6" | join "address" " " }}`,
	`{{ GetPrivateInterfaces | include "type" "IPv4" | sort "type,size" | attr "address" }}`,
	`{{ GetAllInterfaces | include "network" "192.0.2.0/24" | attr "address" }}`,
	`{{ GetAllInterfaces | include "network" "127.0.0.0/8" | join "address" "," }}`,
	`{{ GetAllInterfaces | include "rfc" "1918" | join "address" " " }}`,
	`{{ GetAllInterfaces | include "rfc" "5737" | join "address" " " }}`,
	`{{ GetAllInterfaces | exclude "type" "IPv6" | join "name" "," }}`,
	`{{ GetAllInterfaces | exclude "name" "^lo$" | exclude "flags" "loopback" | join "address" " " }}`,
	`{{ GetAllInterfaces | include "size" "24" | join "network" " " }}`,
	`{{ GetAllInterfaces | include "port" "0" | join "address" " " }}`,
	`{{ GetAllInterfaces | sort "-name,+address" | join "address" " " }}`,
	`{{ GetAllInterfaces | sort "private,-type,default,port,size" | join "address" " " }}`,
	`{{ GetAllInterfaces | unique "name" | join "name" " " }}`,
	`{{ GetAllInterfaces | unique "type" | join "type" " " }}`,
	`{{ GetAllInterfaces | offset 1 | limit 2 | join "address" " " }}`,
	`{{ GetAllInterfaces | offset -1 | attr "address" }}`,
	`{{ GetAllInterfaces | offset 100 }}`,
	`{{ GetAllInterfaces | limit 0x2 | join "address" " " }}`,
	`{{ GetAllInterfaces | limit 0 | join "address" " " }}`,
	`{{ GetAllInterfaces | limit -0 | join "address" " " }}`,
	`{{ GetAllInterfaces | limit 1_0 | join "address" " " }}`,
	`{{ GetAllInterfaces | limit 9223372036854775808 }}`, // go-sockaddr panics
	`{{ GetAllInterfaces | include "name" "eth0" | include "type" "IPv4" | math "address" "+5" | attr "address" }}`,
	`{{ GetAllInterfaces | include "name" "lo" | math "network" "+1" | join "address" " " }}`,
	`{{ GetAllInterfaces | include "type" "IPv6" | math "address" "-1" | join "address" " " }}`,
	`{{ GetAllInterfaces | math "bogus" "+1" }}`,
	`{{ GetAllInterfaces | include "name" "lo" | attr "nosuchattr" }}`,
	`{{ GetAllInterfaces | include "name" "lo" | attr "flags" }}`,
	`{{ GetAllInterfaces | include "name" "eth0" | join "mtu" "/" }}`,
	`{{ GetAllInterfaces | include "name" "eth0" | join "hardware_address" "/" }}`,
	`{{ GetAllInterfaces | include "type" "IPv4" | join "broadcast" " " }}`,
	`{{ GetAllInterfaces | include "type" "IPv6" | join "network" " " }}`,
	`{{ GetAllInterfaces | sort "bogus" }}`,
	`{{ GetAllInterfaces | include "bogus" "x" }}`,
	`{{ GetAllInterfaces | include "name" "(" }}`,
	`{{ GetAllInterfaces | attr "address" }}`,
	`{{ GetDefaultInterfaces | attr "name" }}`,
	// Arguments: ".", parentheses, pipes into a string parameter.
	`{{ attr "address" (GetAllInterfaces | include "name" "^lo$") }}`,
	`{{ include "name" "lo" . | attr "name" }}`,
	`{{ limit 1 . | attr "address" }}`,
	`{{ join "address" " " GetPrivateInterfaces }}`,
	`{{ "eth0" | GetInterfaceIP }}`,
	`{{ (GetPrivateIP) }}`,
	`{{ ((GetAllInterfaces | limit 1)) | attr "name" }}`,
	`{{ GetInterfaceIP (GetAllInterfaces | include "type" "IPv4" | limit 1 | attr "name") }}`,
	// Text, literals, trim markers and comments.
	"10.1.2.3",
	"",
	`{{ "fd00::7" }}`,
	"{{ `10.0.0.1` }}",
	`{{ "\x31\u0030.0.0.1" }}`,
	`{{ 10 }}.0.0.1`,
	`{{ 0x0a }}`,
	`{{ -1 }}`,
	`  {{- GetPrivateIP -}}  `,
	"\n{{- GetPrivateIP -}}\n",
	"{{GetPrivateIP}}",
	"{{\tGetInterfaceIP\n\"lo\"\t}}",
	`a {{- "b" }} c`,
	`{{/* a comment */}}{{ GetPrivateIP }}`,
	`x {{- /* trimmed */ -}} y`,
	`{{ "}}" }}`,
	`{{ GetPrivateIP }}}`,
	`{ {{- GetPrivateIP }}`,
	`{{ GetPrivateIP }} {{ GetPublicIP }}`,
	`{{ GetPrivateIP | GetInterfaceIP }}`,
	// Type errors: text/template finds them when it runs, meshlet before.
	`{{ GetPrivateIP | include "name" "lo" }}`,
	`{{ GetAllInterfaces | limit "1" }}`,
	`{{ GetAllInterfaces | limit -1 }}`,
	`{{ GetAllInterfaces | limit +1 }}`,
	`{{ GetAllInterfaces | offset "1" }}`,
	`{{ GetAllInterfaces | sort 1 }}`,
	`{{ GetInterfaceIP 1 }}`,
	`{{ GetInterfaceIP . }}`,
	`{{ GetInterfaceIP }}`,
	`{{ GetPrivateIP "x" }}`,
	`{{ attr "address" "lo" }}`,
	`{{ attr "address" 1 }}`,
	`{{ attr "address" GetPrivateIP }}`,
	`{{ attr "address" include }}`,
	`{{ include "name" "lo" }}`,
	`{{ "x" "y" }}`,
	`{{ . "x" }}`,
	`{{ (GetPrivateIP) "x" }}`,
	`{{ GetAllInterfaces | (limit 1) }}`,
	`{{ 1 | attr "address" }}`,
	`{{ 9223372036854775808 }}`,
	// Syntax errors.
	"{{ GetPrivateIP",
	"{{ GetPrivateIP }",
	"{{ }}",
	"{{ GetPrivateIP | }}", // text/template ignores the "|"
	"{{ (GetPrivateIP |) }}",
	"{{ | GetPrivateIP }}",
	"{{ GetPrivateIP || GetPublicIP }}",
	`{{ GetInterfaceIP "eth0 }}`,
	"{{ GetInterfaceIP `eth0 }}",
	`{{ GetInterfaceIP "a""b" }}`,
	`{{ (GetPrivateIP }}`,
	`{{ GetPrivateIP) }}`,
	`{{ () }}`,
	`{{ NoSuchFunction }}`,
	`{{ getprivateip }}`,
	"{{-GetPrivateIP}}",
	"{{ GetPrivateIP-}}",
	`{{ 1x }}`,
	`{{ GetPrivateIP# }}`,
	`{{ GetPrivateIP , }}`,
	`{{ é }}`,
	`{{ /* not a comment */ }}`,
	`{{/* unclosed }}`,
	`{{/* c */ GetPrivateIP }}`,
}

// evalBoth evaluates src with meshlet's evaluator and with
// go-sockaddr/template; ok reports whether each accepted it.
//
// Both read the machine's live interfaces, which other tests change while
// this one runs (the integration labs add and move veth pairs), so a pair
// of evaluations that straddles such a change is made again.
func evalBoth(src string) (ours string, oursErr error, theirs string, theirsErr error) {
	for range 20 {
		before := interfacesNow()
		e, err := parseExpr(src)
		ours, oursErr = "", err
		if oursErr == nil {
			ours, oursErr = e.eval()
		}
		theirs, theirsErr = sockaddrtemplate.Parse(src)
		if interfacesNow() == before {
			break
		}
	}
	return ours, oursErr, theirs, theirsErr
}

// interfacesNow describes the machine's interfaces and their addresses.
func interfacesNow() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		fmt.Fprintf(&b, "%d %s %v %v;", ifc.Index, ifc.Name, ifc.Flags, addrs)
	}
	return b.String()
}

func TestSameAsSockaddrTemplate(t *testing.T) {
	var accepted int
	for _, src := range sameAsSockaddr {
		ours, oursErr, theirs, theirsErr := evalBoth(src)
		switch {
		case (oursErr == nil) != (theirsErr == nil):
			t.Errorf("%q: meshlet gives %q, %v; go-sockaddr gives %q, %v", src, ours, oursErr, theirs, theirsErr)
		case oursErr == nil && ours != theirs:
			t.Errorf("%q: meshlet gives %q; go-sockaddr gives %q", src, ours, theirs)
		case oursErr == nil:
			accepted++
			t.Logf("%q = %q", src, ours)
		default:
			if strings.Contains(oursErr.Error(), "\n") {
				t.Errorf("%q: error %q has more than one line", src, oursErr)
			}
			t.Logf("%q: %v", src, oursErr)
		}
	}
	// Guard against a machine where everything fails alike.
	if accepted < 50 {
		t.Errorf("only %d templates evaluated without error; the comparison proves little", accepted)
	}
}

// TestUnsupported lists what text/template accepts but meshlet refuses:
// each gets an error that names the construct, at CheckTemplate time.
func TestUnsupported(t *testing.T) {
	tests := []struct {
		tmpl string
		want string
	}{
		{`{{ if GetPrivateIP }}{{ GetPrivateIP }}{{ end }}`, `the "if" action`},
		{`{{ range GetAllInterfaces }}{{ . }}{{ end }}`, `the "range" action`},
		{`{{ with GetPrivateIP }}{{ . }}{{ end }}`, `the "with" action`},
		{`{{ define "x" }}{{ end }}`, `the "define" action`},
		{`{{ template "x" }}`, `the "template" action`},
		{`{{ $ip := GetPrivateIP }}{{ $ip }}`, "variables ($)"},
		{`{{ .Name }}`, "field access .Name"},
		{`{{ (GetAllInterfaces).Len }}`, "field access .Len"},
		{`{{ printf "%s" GetPrivateIP }}`, `built-in "printf"`},
		{`{{ GetPrivateIP | print }}`, `built-in "print"`},
		{`{{ index . 0 }}`, `built-in "index"`},
		{`{{ len GetAllInterfaces }}`, `built-in "len"`},
		{`{{ true }}`, "constant true"},
		{`{{ nil }}`, "constant nil"},
		{`{{ 'a' }}`, "character constants"},
		{`{{ 1.5 }}`, "number 1.5"},
		{`{{ GetAllInterfaces | limit 1.0 }}`, "number 1.0"},
		{`{{ 1e3 }}`, "number 1e3"},
		{`{{ 2i }}`, "number 2i"},
		{`{{ 1+2i }}`, "complex number"},
	}
	for _, tt := range tests {
		if _, err := sockaddrtemplate.ParseIfAddrs(tt.tmpl, nil); err != nil && !strings.Contains(err.Error(), "execute") {
			t.Errorf("%q: go-sockaddr/template cannot parse it either (%v); the test proves nothing", tt.tmpl, err)
		}
		err := CheckTemplate(tt.tmpl)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "does not evaluate") {
			t.Errorf("CheckTemplate(%q) = %v; want an error naming %s", tt.tmpl, err, tt.want)
		}
	}
}
