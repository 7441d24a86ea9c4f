package agent

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/upstream"
)

// newCerts makes the Connect trust material's manager for the identity
// meshlet presents, or nil when mTLS is off or there is no identity. The
// latter is said at start, since it means outbound stays plaintext.
func newCerts(cfg Config, consul certs.Consul, log *slog.Logger) (*certs.Manager, error) {
	if cfg.MTLS == upstream.MTLSOff {
		log.Info("mtls: off; every connection is plaintext", "setting", cfg.source("mtls"))
		return nil, nil
	}
	name, from := cfg.mtlsIdentity()
	if name == "" {
		// checkMTLS refused strict mode already.
		log.Warn("mtls: no identity to present, so outbound connects in plaintext, even to instances that offer mTLS: register the app (SERVICE_NAME) or set --mtls-identity (MESHLET_MTLS_IDENTITY)",
			"mode", cfg.MTLS)
		return nil, nil
	}
	if len(cfg.Services) > 0 && cfg.MTLSIdentity != "" && cfg.MTLSIdentity != name {
		log.Warn("mtls: --mtls-identity is ignored: a sidecar that registers an app presents the app's identity",
			"identity", name, "ignored", cfg.MTLSIdentity)
	}
	m, err := certs.New(certs.Config{Consul: consul, Service: name, Log: log.With("part", "certs")})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.source("mtls"), err)
	}
	log.Info("mtls: presenting a Connect identity", "mode", cfg.MTLS, "service", name, "from", from)
	return m, nil
}

// clientTLS is the manager as upstream takes it: a nil interface, not a
// nil pointer in one, when there is none.
func (a *Agent) clientTLS() upstream.ClientTLS {
	if a.certs == nil {
		return nil
	}
	return a.certs
}

// certsNotReady says why the trust material keeps meshlet from being
// ready: before the first roots and leaf, or once the leaf expired.
func (a *Agent) certsNotReady() []string {
	if a.certs == nil {
		return nil
	}
	s := a.certs.Snapshot()
	if !s.Ready {
		why := fmt.Sprintf("mtls: waiting for the Connect CA roots and the leaf of %q from consul", s.Service)
		for _, w := range s.Warnings {
			why += "; " + w
		}
		return []string{why}
	}
	if !s.LeafNotAfter.IsZero() && !time.Now().Before(s.LeafNotAfter) {
		return []string{fmt.Sprintf("mtls: leaf %s of %q expired at %s and consul gave no new one: peers refuse it",
			s.LeafSerial, s.Service, s.LeafNotAfter.Format(time.RFC3339))}
	}
	return nil
}

// certsNotes says, while ready, what of the trust material needs an
// operator's eye: consul not answering its watches (the last leaf keeps
// serving until it expires), a leaf near its expiry.
func (a *Agent) certsNotes() []string {
	if a.certs == nil {
		return nil
	}
	s := a.certs.Snapshot()
	if !s.Ready || len(s.Warnings) == 0 {
		return nil
	}
	note := fmt.Sprintf("mtls: serving the last leaf %s of %q until it expires at %s", s.LeafSerial, s.Service, s.LeafNotAfter.Format(time.RFC3339))
	for _, w := range s.Warnings {
		note += "; " + w
	}
	return []string{note}
}
