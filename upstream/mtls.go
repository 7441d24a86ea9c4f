package upstream

import (
	"crypto/tls"
	"fmt"

	"github.com/meshlet/meshlet/certs"
)

// MTLSMode is how the mesh uses Consul Connect's mutual TLS (see
// Config.MTLS): off, permissive (the default) or strict.
type MTLSMode string

const (
	// MTLSOff: plaintext everywhere, as before Connect.
	MTLSOff MTLSMode = "off"
	// MTLSPermissive: mTLS toward every instance that offers it
	// (a Connect sidecar in /v1/health/connect/NAME), plaintext to the
	// others; the app's own port still takes plaintext callers.
	MTLSPermissive MTLSMode = "permissive"
	// MTLSStrict: outbound never falls back to plaintext, and only the
	// inbound listener may reach the app's registered ports.
	MTLSStrict MTLSMode = "strict"
)

// ParseMTLSMode reads a --mtls value; "" is permissive.
func ParseMTLSMode(s string) (MTLSMode, error) {
	switch m := MTLSMode(s); m {
	case "":
		return MTLSPermissive, nil
	case MTLSOff, MTLSPermissive, MTLSStrict:
		return m, nil
	}
	return "", fmt.Errorf("mtls mode %q: want off, permissive or strict", s)
}

// ClientTLS is what the core needs to dial instances over mTLS with the
// app's identity. *certs.Manager has it.
type ClientTLS interface {
	// ClientConfig is the tls.Config of a connection to an instance of
	// t, which checks that the server is t.
	ClientConfig(t certs.Target) *tls.Config
	// Identity is the app's own identity, once its leaf arrived.
	Identity() (certs.ID, bool)
}
