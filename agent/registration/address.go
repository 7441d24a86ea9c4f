package registration

import (
	"fmt"
	"net/netip"
	"strings"
	"text/template"

	sockaddrtemplate "github.com/hashicorp/go-sockaddr/template"
)

// DefaultAddressTemplate picks the first private address of the interface
// with the default route, as Consul's own -bind does.
const DefaultAddressTemplate = "{{ GetPrivateIP }}"

// CheckTemplate reports whether tmpl is a go-sockaddr template, without
// evaluating it: a sidecar that registers nothing never needs its address.
func CheckTemplate(tmpl string) error {
	_, err := template.New("address").
		Funcs(sockaddrtemplate.SourceFuncs).
		Funcs(sockaddrtemplate.SortFuncs).
		Funcs(sockaddrtemplate.FilterFuncs).
		Funcs(sockaddrtemplate.HelperFuncs).
		Parse(tmpl)
	if err != nil {
		return fmt.Errorf("%q is not a go-sockaddr template: %s", tmpl, oneLine(err.Error()))
	}
	return nil
}

// Address evaluates a go-sockaddr template (such as {{ GetPrivateIP }} or
// {{ GetInterfaceIP "eth0" }}) in the current network namespace and returns
// the one IP address it yields.
func Address(tmpl string) (netip.Addr, error) {
	if err := CheckTemplate(tmpl); err != nil {
		return netip.Addr{}, err
	}
	out, err := sockaddrtemplate.Parse(tmpl)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("evaluating %q: %s", tmpl, oneLine(err.Error()))
	}
	fields := strings.Fields(out)
	switch len(fields) {
	case 0:
		return netip.Addr{}, fmt.Errorf("%q matches no address in this network namespace", tmpl)
	case 1:
	default:
		return netip.Addr{}, fmt.Errorf("%q matches %d addresses (%s); want one", tmpl, len(fields), strings.Join(fields, " "))
	}
	a, err := netip.ParseAddr(fields[0])
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q gives %q, which is not an IP address", tmpl, fields[0])
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("%q gives %s, which callers cannot connect to", tmpl, a)
	}
	return a.Unmap(), nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
