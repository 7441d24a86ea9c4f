package registration

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultAddressTemplate picks the first private address of the interface
// with the default route, as Consul's own -bind does.
const DefaultAddressTemplate = "{{ GetPrivateIP }}"

// CheckTemplate reports whether tmpl is a go-sockaddr template meshlet can
// evaluate, without evaluating it: a sidecar that registers nothing never
// needs its address, but a mistake should still stop it at start-up.
//
// Templates are evaluated by meshlet itself rather than by
// go-sockaddr/template, whose text/template makes the binary keep every
// exported method it can reach. Every function of go-sockaddr's template
// function maps is supported, in pipelines with string and integer
// literals, "." and parentheses; text/template's actions (if, range, ...),
// variables, fields and built-ins are refused by name.
func CheckTemplate(tmpl string) error {
	_, err := parseTemplate(tmpl)
	return err
}

func parseTemplate(tmpl string) (*sockaddrExpr, error) {
	e, err := parseExpr(tmpl)
	if err != nil {
		var xe *exprError
		if errors.As(err, &xe) && xe.unsupported {
			return nil, fmt.Errorf("%q uses a go-sockaddr template feature meshlet does not evaluate: %s", tmpl, oneLine(err.Error()))
		}
		return nil, fmt.Errorf("%q is not a go-sockaddr template: %s", tmpl, oneLine(err.Error()))
	}
	return e, nil
}

// Address evaluates a go-sockaddr template (such as {{ GetPrivateIP }} or
// {{ GetInterfaceIP "eth0" }}) in the current network namespace and returns
// the one IP address it yields.
func Address(tmpl string) (netip.Addr, error) {
	e, err := parseTemplate(tmpl)
	if err != nil {
		return netip.Addr{}, err
	}
	out, err := e.eval()
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
