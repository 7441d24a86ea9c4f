package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// material is one consistent view of the trust material. It is never
// changed once published; an update publishes a new one.
type material struct {
	roots       *x509.CertPool // nil until the first roots arrived
	rootCount   int
	activeRoot  string // Consul's ID of the active root
	trustDomain string

	leaf       *tls.Certificate // nil until the first leaf arrived; Leaf is parsed
	leafID     ID
	leafSerial string // Consul's colon-separated hex
}

func (m *material) ready() bool { return m != nil && m.roots != nil && m.leaf != nil }

// parseRoots turns Consul's root list into a pool of every root listed. A
// root that does not parse is reported and left out; a list of which none
// parses is an error, so that the last good pool stays.
func parseRoots(list *api.CARootList) (pool *x509.CertPool, n int, bad []string, err error) {
	if list == nil || len(list.Roots) == 0 {
		return nil, 0, nil, errors.New("consul listed no CA roots")
	}
	pool = x509.NewCertPool()
	for _, r := range list.Roots {
		certs, err := parsePEMCerts(r.RootCertPEM)
		if err != nil || len(certs) == 0 {
			bad = append(bad, fmt.Sprintf("root %s: %v", r.ID, orNone(err)))
			continue
		}
		for _, c := range certs {
			pool.AddCert(c)
			n++
		}
	}
	if n == 0 {
		return nil, 0, bad, fmt.Errorf("none of consul's %d CA roots parses: %s", len(list.Roots), strings.Join(bad, "; "))
	}
	return pool, n, bad, nil
}

func orNone(err error) error {
	if err == nil {
		return errors.New("no certificate in its PEM")
	}
	return err
}

func parsePEMCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		out = append(out, c)
	}
}

// parseLeaf checks a leaf Consul issued for service: its chain (leaf first,
// then any intermediates Consul appends during a rotation) and its key
// belong together, and its URI SAN names service.
func parseLeaf(service string, lc *api.LeafCert) (*tls.Certificate, ID, error) {
	if lc == nil {
		return nil, ID{}, errors.New("consul returned no leaf")
	}
	cert, err := tls.X509KeyPair([]byte(lc.CertPEM), []byte(lc.PrivateKeyPEM))
	if err != nil {
		return nil, ID{}, fmt.Errorf("leaf of %q: %w", service, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, ID{}, fmt.Errorf("leaf of %q: %w", service, err)
		}
	}
	id, err := leafID(cert.Leaf)
	if err != nil {
		return nil, ID{}, fmt.Errorf("leaf of %q: %w", service, err)
	}
	if !strings.EqualFold(id.Service, service) {
		return nil, ID{}, fmt.Errorf("leaf of %q names service %q", service, id.Service)
	}
	return &cert, id, nil
}

// leafID returns the one SPIFFE identity of a Connect leaf.
func leafID(c *x509.Certificate) (ID, error) {
	if len(c.URIs) != 1 {
		return ID{}, fmt.Errorf("certificate has %d URI SANs, want exactly one", len(c.URIs))
	}
	return IDFromURL(c.URIs[0])
}

// SerialString writes a serial number the way Consul does (lower-case hex
// bytes separated by colons), which is what ConnectAuthorize expects.
func SerialString(n *big.Int) string {
	if n == nil {
		return ""
	}
	b := n.Bytes()
	if len(b) == 0 {
		b = []byte{0}
	}
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	return sb.String()
}

// lifetimeLeft returns how much of the leaf's validity is left at now, and
// its whole lifetime.
func lifetimeLeft(c *x509.Certificate, now time.Time) (left, lifetime time.Duration) {
	return c.NotAfter.Sub(now), c.NotAfter.Sub(c.NotBefore)
}
