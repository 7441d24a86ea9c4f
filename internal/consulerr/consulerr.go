// Package consulerr says what a user should do about the errors of Consul
// whose cause its own message hides or words for another audience: a
// missing ACL permission, an ACL token Consul does not know, a TLS
// certificate meshlet does not trust. Every part of meshlet that talks to
// Consul wraps its errors with Explain, so the log and /readyz say which
// permission or setting to fix, at the first call that needs it.
package consulerr

import (
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"

	"github.com/hashicorp/consul/api"
)

// TokenSource names where meshlet's Consul ACL token comes from.
const TokenSource = "CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"

// lacks matches Consul's (1.8 and later) permission-denied message:
// "Permission denied: token with AccessorID '…' lacks permission
// 'service:write' on "web"".
var lacks = regexp.MustCompile(`lacks permission '([a-z_]+:[a-z]+)'(?: on "([^"]*)")?`)

// Permission returns the ACL permission a 403 of Consul says is missing,
// as policies spell it (`service:write on "web"`), when it names one.
func Permission(err error) (string, bool) {
	var status api.StatusError
	if !errors.As(err, &status) || status.Code != 403 {
		return "", false
	}
	m := lacks.FindStringSubmatch(status.Body)
	if m == nil {
		return "", false
	}
	if m[2] != "" {
		return fmt.Sprintf("%s on %q", m[1], m[2]), true
	}
	return m[1], true
}

// Explain wraps err with what to do about it, when it is a 403 of Consul
// (missing permission, unknown token) or a certificate error of the HTTPS
// connection to the Consul agent; other errors come back unchanged.
func Explain(err error) error {
	if err == nil {
		return nil
	}
	if perm, ok := Permission(err); ok {
		return fmt.Errorf("missing consul ACL permission %s: give meshlet's token (%s) a policy with it: %w", perm, TokenSource, err)
	}
	var status api.StatusError
	if errors.As(err, &status) && status.Code == 403 {
		return fmt.Errorf("consul refused meshlet's ACL token (%s): %w", TokenSource, err)
	}
	var unknownCA x509.UnknownAuthorityError
	if errors.As(err, &unknownCA) {
		return fmt.Errorf("the consul agent's TLS certificate is not signed by the CA meshlet trusts (CONSUL_CACERT, CONSUL_CAPATH): %w", err)
	}
	var badName x509.HostnameError
	if errors.As(err, &badName) {
		return fmt.Errorf("the consul agent's TLS certificate is not for the address meshlet dials (set CONSUL_TLS_SERVER_NAME to a name it has): %w", err)
	}
	return err
}
