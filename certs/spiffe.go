package certs

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ID is the identity of a Consul Connect service, as written in the URI SAN
// of its leaf certificate:
//
//	spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>
//	spiffe://<trust-domain>/ap/<partition>/ns/<namespace>/dc/<datacenter>/svc/<service>
//
// The second form is Consul Enterprise's, for a partition other than the
// default one. Other Connect identities (agents, gateways) are not services
// and are refused by ParseID.
type ID struct {
	TrustDomain string // e.g. 7f3a0b6e-....consul
	Partition   string // "" for the default partition
	Namespace   string
	Datacenter  string
	Service     string
}

// maxIDLen bounds what ParseID reads; Consul's URIs are well under 300 bytes.
const maxIDLen = 2048

// ParseID parses a SPIFFE URI of a Consul service. It is strict, because its
// input comes from a peer's certificate: one scheme, a host without port or
// user, no query or fragment, and exactly the segments above, each
// non-empty, valid UTF-8, without control characters or a slash.
func ParseID(s string) (ID, error) {
	if len(s) > maxIDLen {
		return ID{}, fmt.Errorf("spiffe id: %d bytes, want at most %d", len(s), maxIDLen)
	}
	u, err := url.Parse(s)
	if err != nil {
		return ID{}, fmt.Errorf("spiffe id: %w", err)
	}
	return IDFromURL(u)
}

// IDFromURL is ParseID for a URL already parsed, such as one of
// x509.Certificate.URIs.
func IDFromURL(u *url.URL) (ID, error) {
	if u == nil {
		return ID{}, errors.New("spiffe id: no URI")
	}
	if u.Scheme != "spiffe" {
		return ID{}, fmt.Errorf("spiffe id: scheme %q, want spiffe", u.Scheme)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" {
		return ID{}, errors.New("spiffe id: only a trust domain and a path are allowed")
	}
	if u.Port() != "" || strings.Contains(u.Host, ":") {
		return ID{}, errors.New("spiffe id: trust domain has a port")
	}
	if err := checkTrustDomain(u.Host); err != nil {
		return ID{}, err
	}
	segs := strings.Split(u.EscapedPath(), "/")
	if len(segs) < 1 || segs[0] != "" {
		return ID{}, errors.New("spiffe id: path must start with /")
	}
	segs = segs[1:]
	for i, s := range segs {
		v, err := url.PathUnescape(s)
		if err != nil {
			return ID{}, fmt.Errorf("spiffe id: path segment %d: %w", i, err)
		}
		if err := checkSegment(v); err != nil {
			return ID{}, fmt.Errorf("spiffe id: path segment %d: %w", i, err)
		}
		segs[i] = v
	}
	id := ID{TrustDomain: u.Host}
	if len(segs) == 8 && segs[0] == "ap" {
		id.Partition = segs[1]
		segs = segs[2:]
	}
	if len(segs) != 6 || segs[0] != "ns" || segs[2] != "dc" || segs[4] != "svc" {
		return ID{}, fmt.Errorf("spiffe id: path %q is not /ns/NS/dc/DC/svc/NAME", u.EscapedPath())
	}
	id.Namespace, id.Datacenter, id.Service = segs[1], segs[3], segs[5]
	return id, nil
}

// checkTrustDomain accepts what the SPIFFE spec allows in a trust domain:
// lower-case letters, digits, dots, dashes and underscores.
func checkTrustDomain(td string) error {
	if td == "" {
		return errors.New("spiffe id: no trust domain")
	}
	if len(td) > 255 {
		return errors.New("spiffe id: trust domain longer than 255 bytes")
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("spiffe id: trust domain %q: character %q not allowed", td, c)
		}
	}
	return nil
}

func checkSegment(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	for _, r := range s {
		if r == '/' || unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

// URL returns the URI of the identity, escaped as Consul escapes it.
func (id ID) URL() *url.URL {
	p := fmt.Sprintf("/ns/%s/dc/%s/svc/%s", id.Namespace, id.Datacenter, id.Service)
	if id.Partition != "" {
		p = "/ap/" + id.Partition + p
	}
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: p}
}

// String returns the URI of the identity.
func (id ID) String() string { return id.URL().String() }

// SameService reports whether two identities name the same service: the
// same partition, namespace, datacenter and name (case-insensitively, as
// Consul compares them), whatever their trust domains. Consul's own proxy
// checks a server this way: the trust domain is left out so that a cluster
// can move to another trust domain (its roots are then cross-signed), and
// what keeps a foreign cluster's certificates out is the chain to a root
// this cluster lists.
func (id ID) SameService(o ID) bool {
	return strings.EqualFold(partition(id.Partition), partition(o.Partition)) &&
		strings.EqualFold(id.Namespace, o.Namespace) &&
		strings.EqualFold(id.Datacenter, o.Datacenter) &&
		strings.EqualFold(id.Service, o.Service)
}

func partition(p string) string {
	if p == "" {
		return "default"
	}
	return p
}
