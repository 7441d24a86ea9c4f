package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Peer is a peer whose certificate chained to a current root.
type Peer struct {
	ID     ID
	URI    string // the URI SAN as the peer presented it
	Serial string // of its leaf, written as Consul writes serials
	Cert   *x509.Certificate
}

// Authorize decides whether a verified client may connect; an error
// refuses it and is what the handshake fails with. It runs at every
// handshake, resumed ones included. ctx is the handshake's.
type Authorize func(ctx context.Context, p Peer) error

// Target names the service a client expects at the other end.
type Target struct {
	Service   string
	Namespace string // "" is "default"
	// Datacenter "" is the app's own (its leaf's).
	Datacenter string
	Partition  string // "" is the default partition
}

// ErrNotReady is returned by handshakes before the first roots and leaf.
var ErrNotReady = errors.New("certs: no CA roots and leaf from consul yet")

// verify checks a peer's chain (leaf first, then intermediates) against
// the current roots at the current time, for the key usage its side must
// have, and returns its identity. It is called for full and resumed
// handshakes alike, so a root removed since, or a leaf expired since, is
// refused on resumption too.
func (m *Manager) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (Peer, error) {
	cur := m.state.Load()
	if cur.roots == nil {
		return Peer{}, ErrNotReady
	}
	if len(chain) == 0 {
		return Peer{}, errors.New("no certificate")
	}
	opts := x509.VerifyOptions{
		Roots:       cur.roots,
		CurrentTime: m.cfg.Now(),
		KeyUsages:   []x509.ExtKeyUsage{usage},
	}
	if len(chain) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range chain[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	leaf := chain[0]
	if _, err := leaf.Verify(opts); err != nil {
		return Peer{}, fmt.Errorf("certificate %s: %w", SerialString(leaf.SerialNumber), err)
	}
	id, err := leafID(leaf)
	if err != nil {
		return Peer{}, err
	}
	return Peer{ID: id, URI: leaf.URIs[0].String(), Serial: SerialString(leaf.SerialNumber), Cert: leaf}, nil
}

// leafCert returns the current leaf.
func (m *Manager) leafCert() (*tls.Certificate, error) {
	if cur := m.state.Load(); cur.leaf != nil {
		return cur.leaf, nil
	}
	return nil, ErrNotReady
}

// ServerConfig returns the tls.Config of a Connect server (meshlet's
// inbound listener): it presents the current leaf, requires a client
// certificate that chains to a current root and carries a service
// identity, and asks authz about it at every handshake. It offers no
// ALPN: the listener carries bytes, whatever protocol they are.
//
// Go's own client verification (ClientAuth RequireAndVerifyClientCert)
// is not used: it would check against a pool fixed in the config and be
// skipped on resumption. VerifyConnection does it instead, every time.
func (m *Manager) ServerConfig(authz Authorize) *tls.Config {
	perHello := func(ctx context.Context) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS12,
			ClientAuth: tls.RequireAnyClientCert,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return m.leafCert()
			},
			VerifyConnection: func(cs tls.ConnectionState) error {
				p, err := m.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
				if err != nil {
					return err
				}
				if authz != nil {
					return authz(ctx, p)
				}
				return nil
			},
		}
	}
	base := perHello(context.Background())
	// Per ClientHello, a config whose VerifyConnection has the handshake's
	// context. The session ticket keys stay the base config's (Go uses the
	// original config's keys when the returned one sets none), so
	// resumption works across connections.
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		return perHello(hello.Context()), nil
	}
	return base
}

// ClientConfig returns the tls.Config of a Connect client dialing t: it
// presents the current leaf and accepts a server whose chain leads to a
// current root and whose identity is t's service. As Consul's own proxy
// does, it compares the service path (partition, namespace, datacenter,
// name) and not the trust domain (see ID.SameService). It sends no server
// name: Consul's proxies need none and a name would mean nothing here.
// Sessions are cached, so later connections to the same address resume,
// and are checked again when they do.
func (m *Manager) ClientConfig(t Target) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Hostname verification is replaced by VerifyConnection below,
		// which checks the chain and the SPIFFE identity instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.leafCert()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			p, err := m.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			want, err := m.expected(t)
			if err != nil {
				return err
			}
			if !p.ID.SameService(want) {
				return fmt.Errorf("server is %s, want service %s", p.ID, want)
			}
			return nil
		},
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
}

// expected fills t's defaults in from the app's own identity.
func (m *Manager) expected(t Target) (ID, error) {
	cur := m.state.Load()
	want := ID{TrustDomain: cur.trustDomain, Partition: t.Partition, Namespace: t.Namespace, Datacenter: t.Datacenter, Service: t.Service}
	if want.Namespace == "" {
		want.Namespace = "default"
	}
	if want.Datacenter == "" {
		if cur.leaf == nil {
			return ID{}, ErrNotReady
		}
		want.Datacenter = cur.leafID.Datacenter
	}
	return want, nil
}
