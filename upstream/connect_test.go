package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
)

func TestSidecarsFromHealth(t *testing.T) {
	proxy := func(id, node, addr string, port int, dest string) *api.ServiceEntry {
		return &api.ServiceEntry{
			Node: &api.Node{Node: node, Address: "10.0.0.9"},
			Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: id, Address: addr, Port: port,
				Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceID: dest}},
		}
	}
	native := &api.ServiceEntry{Node: &api.Node{Node: "n3"},
		Service: &api.AgentService{ID: "web-3", Address: "10.0.0.3", Port: 8443, Connect: &api.AgentServiceConnect{Native: true}}}
	critical := proxy("web-4-sidecar", "n4", "10.0.0.4", 21000, "web-4")
	critical.Checks = api.HealthChecks{{Status: api.HealthCritical}}
	plain := &api.ServiceEntry{Node: &api.Node{Node: "n5"}, Service: &api.AgentService{ID: "web-5", Address: "10.0.0.5", Port: 80}}
	got, skipped := sidecarsFromHealth([]*api.ServiceEntry{
		proxy("web-1-sidecar-b", "n1", "10.0.0.1", 21001, "web-1"),
		proxy("web-1-sidecar-a", "n1", "10.0.0.1", 21000, "web-1"), // sorted first: wins
		proxy("web-2-sidecar", "n2", "", 21000, "web-2"),           // the node's address
		proxy("web-6-sidecar", "n6", "::ffff:10.0.0.6", 21000, "web-6"),
		native, critical, plain,
		proxy("no-dest", "n7", "10.0.0.7", 21000, ""),
		proxy("no-port", "n8", "10.0.0.8", 0, "web-8"),
		nil,
	})
	want := map[string]string{
		"n1\x00web-1": "10.0.0.1:21000",
		"n2\x00web-2": "10.0.0.9:21000",
		"n6\x00web-6": "10.0.0.6:21000",
		"n3\x00web-3": "10.0.0.3:8443",
	}
	if !maps.Equal(got, want) {
		t.Errorf("sidecars %q, want %q", got, want)
	}
	if fmt.Sprint(skipped) != "[no-dest no-port web-5]" {
		t.Errorf("skipped %v, want the plain instance and the two unusable sidecars", skipped)
	}
}

func TestHandshakeReason(t *testing.T) {
	timeout := &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), "server certificate from an unknown CA"},
		{x509.CertificateInvalidError{Reason: x509.Expired}, "invalid server certificate (x509: certificate has expired or is not yet valid: )"},
		{errors.New("server is spiffe://x/ns/default/dc/dc1/svc/db, want service spiffe://x/ns/default/dc/dc1/svc/web"), "wrong server identity"},
		{tls.AlertError(42), "refused by the server"},
		{errors.New("remote error: tls: bad certificate"), "refused by the server"},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "the server does not speak TLS"},
		{context.DeadlineExceeded, "timed out"},
		{timeout, "timed out"},
		{io.EOF, "connection closed by the server"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, "connection closed by the server"},
		{errors.New("something else"), "failed"},
	} {
		if got := handshakeReason(tc.err); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.err, got, tc.want)
		}
	}
}

// A state file keeps an instance's sidecar: a meshlet restarted while
// Consul is away still reaches it over mTLS; a half-written mTLS entry
// is dropped.
func TestStateKeepsSidecars(t *testing.T) {
	for _, tc := range []struct {
		e    Endpoint
		keep bool
	}{
		{Endpoint{ID: "a", Addr: "10.0.0.1:21000", Status: "passing", MTLS: true, AppAddr: "10.0.0.1:8080"}, true},
		{Endpoint{ID: "b", Addr: "10.0.0.1:8080", Status: "passing"}, true},
		{Endpoint{ID: "c", Addr: "10.0.0.1:21000", Status: "passing", MTLS: true}, false},
		{Endpoint{ID: "d", Addr: "10.0.0.1:21000", Status: "passing", AppAddr: "10.0.0.1:8080"}, false},
		{Endpoint{ID: "e", Addr: "10.0.0.1:21000", Status: "passing", MTLS: true, AppAddr: "nonsense"}, false},
	} {
		e := tc.e
		if got := validSavedEndpoint(&e); got != tc.keep {
			t.Errorf("%+v: kept %v, want %v", tc.e, got, tc.keep)
		}
	}
}

// Strict mode leaves instances without a sidecar out, and says why when
// none is left; the overlay of its own output (the state file) is the
// same.
func TestConnectOverlay(t *testing.T) {
	eps := []Endpoint{
		{ID: "a", Node: "n", Addr: "10.0.0.1:8080", Status: "passing"},
		{ID: "b", Node: "n", Addr: "10.0.0.2:8080", Status: "passing"},
	}
	sidecars := map[string]string{"n\x00a": "10.0.0.1:21000"}
	for _, tc := range []struct {
		mode     MTLSMode
		sidecars map[string]string
		want     string // addresses, and why
	}{
		{MTLSPermissive, sidecars, "[10.0.0.1:21000 10.0.0.2:8080] "},
		{MTLSStrict, sidecars, "[10.0.0.1:21000] "},
		{MTLSStrict, map[string]string{}, `[] strict mTLS: none of the 2 registered instances of service "web" has a passing Connect sidecar in consul`},
		{MTLSOff, sidecars, "[10.0.0.1:8080 10.0.0.2:8080] "},
	} {
		m := &Mesh{cfg: Config{MTLS: tc.mode, ClientTLS: fakeIdentity{}}, log: testLogger(t)}
		m.mtls.on = tc.mode != MTLSOff
		m.mtls.watching = m.mtls.on
		w := newServiceWatch("web")
		w.connect.sidecars, w.connect.settled = tc.sidecars, true
		out, release := w.connectOverlay(eps, m, false)
		why := w.connect.why
		again, _ := w.connectOverlay(out, m, false)
		var addrs []string
		for _, e := range out {
			addrs = append(addrs, e.Addr)
		}
		got := fmt.Sprintf("%v %s", strings.Fields(strings.Trim(fmt.Sprint(addrs), "[]")), why)
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.mode, got, tc.want)
		}
		if !endpointsEqual(out, again) {
			t.Errorf("%s: overlay of its own output %+v, want %+v", tc.mode, again, out)
		}
		if !release {
			t.Errorf("%s: a settled watch holds requests back", tc.mode)
		}
		for _, e := range out {
			if e.MTLS && m.destOf(e.Addr) != w {
				t.Errorf("%s: Dial would not know %s as a sidecar", tc.mode, e.Addr)
			}
		}
	}
}

// fakeIdentity is a ClientTLS that knows its identity and dials nothing.
type fakeIdentity struct{}

func (fakeIdentity) ClientConfig(certs.Target) *tls.Config { return nil }
func (fakeIdentity) Identity() (certs.ID, bool) {
	return certs.ID{TrustDomain: "x.consul", Namespace: "default", Datacenter: "dc1", Service: "web-client"}, true
}
