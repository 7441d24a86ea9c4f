// Package certstest makes throwaway Connect CAs, leaves signed by them and
// a fake of the Consul agent calls package certs consumes, for tests.
package certstest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// CA is a throwaway Connect CA.
type CA struct {
	ID          string
	TrustDomain string
	Cert        *x509.Certificate
	Key         crypto.Signer
	PEM         string
}

var serials struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serials.Lock()
	defer serials.Unlock()
	serials.n++
	return big.NewInt(1000 + serials.n)
}

// NewCA makes a self-signed root for trustDomain (e.g. "11111111-2222-3333-4444-555555555555.consul").
func NewCA(t testing.TB, id, trustDomain string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: "Test CA " + id},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{ID: id, TrustDomain: trustDomain, Cert: cert, Key: key, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// Leaf describes a leaf to sign. Zero fields get Consul-like defaults.
type Leaf struct {
	Service    string
	Datacenter string   // "dc1"
	Namespace  string   // "default"
	URIs       []string // instead of the service's SPIFFE URI
	NotBefore  time.Time
	NotAfter   time.Time // default: an hour from now
	// ServerOnly gives the leaf only the server-auth key usage (Consul's
	// leaves have both).
	ServerOnly bool
}

// URI returns the SPIFFE URI Consul gives a service in this CA's domain.
func (ca *CA) URI(service, dc string) string {
	return fmt.Sprintf("spiffe://%s/ns/default/dc/%s/svc/%s", ca.TrustDomain, dc, service)
}

// Sign returns a leaf and its key as Consul's agent hands them out.
func (ca *CA) Sign(t testing.TB, l Leaf) *api.LeafCert {
	t.Helper()
	if l.Datacenter == "" {
		l.Datacenter = "dc1"
	}
	if l.Namespace == "" {
		l.Namespace = "default"
	}
	if l.NotBefore.IsZero() {
		l.NotBefore = time.Now().Add(-time.Minute)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = time.Now().Add(time.Hour)
	}
	uris := l.URIs
	if uris == nil {
		uris = []string{fmt.Sprintf("spiffe://%s/ns/%s/dc/%s/svc/%s", ca.TrustDomain, l.Namespace, l.Datacenter, l.Service)}
	}
	var us []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if l.ServerOnly {
		eku = eku[:1]
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: l.Service},
		URIs:         us,
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  eku,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &api.LeafCert{
		SerialNumber:  fmt.Sprintf("%x", tmpl.SerialNumber),
		CertPEM:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		PrivateKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		Service:       l.Service,
		ServiceURI:    strings.Join(uris, ","),
		ValidAfter:    l.NotBefore,
		ValidBefore:   l.NotAfter,
	}
}

// TLSCert turns a leaf into a certificate a test client or server presents.
func TLSCert(t testing.TB, lc *api.LeafCert) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair([]byte(lc.CertPEM), []byte(lc.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Consul fakes the agent's Connect CA endpoints with blocking-query
// semantics as Consul has them: a query with a WaitIndex at or above the
// current index waits for a change, its WaitTime or its context (so a
// client that keeps a WaitIndex from before an index went backwards waits
// a whole WaitTime, as with a restarted agent).
type Consul struct {
	mu          sync.Mutex
	changed     chan struct{} // closed and replaced at each change
	index       uint64
	roots       *api.CARootList
	leaves      map[string]*api.LeafCert
	fail        error
	waitIndexes []uint64 // of every query, in order
	calls       int
}

// NewConsul returns a fake with roots of cas (the first active) and no leaf.
func NewConsul(cas ...*CA) *Consul {
	c := &Consul{changed: make(chan struct{}), index: 10, leaves: map[string]*api.LeafCert{}}
	c.setRootsLocked(cas)
	return c
}

func (c *Consul) bump() {
	c.index++
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Consul) setRootsLocked(cas []*CA) {
	l := &api.CARootList{}
	for i, ca := range cas {
		if i == 0 {
			l.ActiveRootID, l.TrustDomain = ca.ID, ca.TrustDomain
		}
		l.Roots = append(l.Roots, &api.CARoot{ID: ca.ID, Name: ca.ID, RootCertPEM: ca.PEM, Active: i == 0})
	}
	c.roots = l
}

// SetRoots replaces the roots (the first is the active one).
func (c *Consul) SetRoots(cas ...*CA) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setRootsLocked(cas)
	c.bump()
}

// SetRootList replaces the roots with a list as given (bad input tests).
func (c *Consul) SetRootList(l *api.CARootList) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roots = l
	c.bump()
}

// SetLeaf replaces the leaf of service.
func (c *Consul) SetLeaf(service string, lc *api.LeafCert) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leaves[service] = lc
	c.bump()
}

// SetIndex sets the index, e.g. lower to fake a restarted agent.
func (c *Consul) SetIndex(i uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index = i - 1
	c.bump()
}

// Fail makes every query fail with err until Fail(nil).
func (c *Consul) Fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail = err
	c.bump()
}

// Calls returns how many queries were made.
func (c *Consul) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// WaitIndexes returns the WaitIndex of every query so far, in order.
func (c *Consul) WaitIndexes() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint64(nil), c.waitIndexes...)
}

func (c *Consul) wait(q *api.QueryOptions) (uint64, error) {
	ctx := q.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	wt := q.WaitTime
	if wt <= 0 {
		wt = 5 * time.Minute
	}
	timeout := time.NewTimer(wt)
	defer timeout.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.waitIndexes = append(c.waitIndexes, q.WaitIndex)
	for q.WaitIndex != 0 && c.index <= q.WaitIndex && c.fail == nil {
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
			c.mu.Lock()
		case <-timeout.C:
			c.mu.Lock()
			return c.index, c.fail
		case <-ctx.Done():
			c.mu.Lock()
			return 0, ctx.Err()
		}
	}
	return c.index, c.fail
}

// ConnectCARoots implements certs.Consul.
func (c *Consul) ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	idx, err := c.wait(q)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.roots, &api.QueryMeta{LastIndex: idx}, nil
}

// ConnectCALeaf implements certs.Consul.
func (c *Consul) ConnectCALeaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
	idx, err := c.wait(q)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	lc, ok := c.leaves[service]
	if !ok {
		return nil, nil, fmt.Errorf("Unexpected response code: 500 (no leaf for %q)", service)
	}
	return lc, &api.QueryMeta{LastIndex: idx}, nil
}

// LogBuffer is a log sink safe for concurrent writers, for asserting on
// what a component logged.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
