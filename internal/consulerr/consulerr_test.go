package consulerr

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestExplain(t *testing.T) {
	denied := func(body string) error {
		return fmt.Errorf("registering web-1: %w", api.StatusError{Code: 403, Body: body})
	}
	for _, tc := range []struct {
		name string
		err  error
		want string // part of the explained message; "" for unchanged
		perm string
	}{
		{"missing service:write", denied(`Permission denied: token with AccessorID 'a1b2' lacks permission 'service:write' on "web"`),
			`missing consul ACL permission service:write on "web": give meshlet's token (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)`, `service:write on "web"`},
		{"missing operator:read, no resource", denied(`Permission denied: provided token lacks permission 'operator:read'`),
			"missing consul ACL permission operator:read:", "operator:read"},
		{"unknown token", denied("ACL not found"), "consul refused meshlet's ACL token", ""},
		{"500", api.StatusError{Code: 500, Body: "No cluster leader"}, "", ""},
		{"unknown CA", &url.Error{Op: "Get", URL: "https://127.0.0.1:8501/v1/catalog/services", Err: &tlsVerifyErr{x509.UnknownAuthorityError{}}},
			"not signed by the CA meshlet trusts (CONSUL_CACERT", ""},
		{"wrong name", &url.Error{Op: "Get", URL: "https://10.0.0.1:8501/", Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.0.0.1"}},
			"CONSUL_TLS_SERVER_NAME", ""},
		{"other", errors.New("connection refused"), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Explain(tc.err)
			if !errors.Is(got, tc.err) {
				t.Errorf("Explain lost the error: %v", got)
			}
			if tc.want == "" && got != tc.err {
				t.Errorf("Explain(%v) = %v, want it unchanged", tc.err, got)
			}
			if tc.want != "" && !strings.Contains(got.Error(), tc.want) {
				t.Errorf("Explain = %q, want %q in it", got, tc.want)
			}
			if perm, ok := Permission(tc.err); perm != tc.perm || ok != (tc.perm != "") {
				t.Errorf("Permission = %q, %v; want %q", perm, ok, tc.perm)
			}
		})
	}
	if Explain(nil) != nil {
		t.Error("Explain(nil) != nil")
	}
}

// tlsVerifyErr wraps a verification error as crypto/tls does.
type tlsVerifyErr struct{ err error }

func (e *tlsVerifyErr) Error() string { return "tls: failed to verify certificate: " + e.err.Error() }
func (e *tlsVerifyErr) Unwrap() error { return e.err }

func FuzzPermission(f *testing.F) {
	f.Add(`Permission denied: token with AccessorID 'x' lacks permission 'service:write' on "web"`)
	f.Add("ACL not found")
	f.Fuzz(func(t *testing.T, body string) {
		err := api.StatusError{Code: 403, Body: body}
		Permission(err)
		if Explain(err) == nil {
			t.Fatal("Explain of an error is nil")
		}
	})
}
