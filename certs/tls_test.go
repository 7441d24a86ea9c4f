package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/certs/certstest"
)

// A client and a server of one mesh, each with its own manager, shake
// hands; the server sees the client's identity and serial as Consul writes
// them, the client checks the server's service.
func TestMutualHandshake(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web"}))
	clientLeaf := ca.Sign(t, certstest.Leaf{Service: "web-client"})
	fc.SetLeaf("web-client", clientLeaf)
	srv, _ := startManager(t, fc, "web", nil)
	cli, _ := startManager(t, fc, "web-client", nil)

	var seen atomic.Pointer[Peer]
	s := serve(t, srv.ServerConfig(func(_ context.Context, p Peer) error {
		seen.Store(&p)
		return nil
	}))
	cs, err := dial(s.addr(), cli.ClientConfig(Target{Service: "web"}))
	if err != nil {
		t.Fatalf("handshake: %v (server: %v)", err, s.lastErr())
	}
	if cs.NegotiatedProtocol != "" {
		t.Errorf("ALPN %q negotiated, want none", cs.NegotiatedProtocol)
	}
	p := seen.Load()
	if p == nil {
		t.Fatal("authorize was not called")
	}
	if want := ca.URI("web-client", "dc1"); p.URI != want || p.ID.Service != "web-client" || p.ID.TrustDomain != tdA {
		t.Errorf("server saw %+v, want %s", p.ID, want)
	}
	if got, want := p.Serial, SerialString(certstest.TLSCert(t, clientLeaf).Leaf.SerialNumber); got != want || !strings.Contains(got, ":") && len(got) > 2 {
		t.Errorf("serial %q, want %q", got, want)
	}
}

// Every bad client certificate is refused by the server, with a reason.
func TestServerRefusesBadClients(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	other := certstest.NewCA(t, "ca-other", tdA) // same trust domain, other key
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web"}))
	srv, _ := startManager(t, fc, "web", nil)
	authorized := atomic.Int32{}
	s := serve(t, srv.ServerConfig(func(context.Context, Peer) error { authorized.Add(1); return nil }))

	for _, tc := range []struct {
		name   string
		cert   func() []tls.Certificate
		reason string // in the server's handshake error
	}{
		{"no client certificate", func() []tls.Certificate { return nil }, "client didn't provide a certificate"},
		{"certificate from another CA", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, other.Sign(t, certstest.Leaf{Service: "web-client"}))}
		}, "unknown authority"},
		{"expired certificate", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web-client",
				NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}))}
		}, "expired"},
		{"not yet valid", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web-client",
				NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(2 * time.Hour)}))}
		}, "not yet valid"},
		{"no URI SAN", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web-client", URIs: []string{}}))}
		}, "0 URI SANs"},
		{"two URI SANs", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "x",
				URIs: []string{ca.URI("a", "dc1"), ca.URI("b", "dc1")}}))}
		}, "2 URI SANs"},
		{"an agent's identity, not a service's", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "x",
				URIs: []string{"spiffe://" + tdA + "/agent/client/dc/dc1/id/node1"}}))}
		}, "is not /ns/NS/dc/DC/svc/NAME"},
		{"server-only key usage", func() []tls.Certificate {
			return []tls.Certificate{certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web-client", ServerOnly: true}))}
		}, "incompatible key usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certs := tc.cert()
			cfg := &tls.Config{InsecureSkipVerify: true, Certificates: certs}
			_, err := dial(s.addr(), cfg)
			if err == nil {
				t.Fatal("client was let through")
			}
			serr := s.lastErr()
			if serr == nil || !strings.Contains(serr.Error(), tc.reason) {
				t.Errorf("server error %v, want one with %q", serr, tc.reason)
			}
		})
	}
	if n := authorized.Load(); n != 0 {
		t.Errorf("authorize was asked %d times about refused clients", n)
	}
}

// The client refuses a server that is not the service it dials, or that
// does not chain to a current root; it accepts a server of another trust
// domain whose chain is good, as Consul's proxy does.
func TestClientChecksServer(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	other := certstest.NewCA(t, "ca-other", tdA)
	caB := certstest.NewCA(t, "ca-b", tdB)
	fc := certstest.NewConsul(ca, caB) // both trusted, ca active
	fc.SetLeaf("web-client", ca.Sign(t, certstest.Leaf{Service: "web-client"}))
	cli, _ := startManager(t, fc, "web-client", nil)

	for _, tc := range []struct {
		name   string
		server *certstest.CA
		leaf   certstest.Leaf
		target Target
		reason string // "" means accepted
	}{
		{"the service dialed", ca, certstest.Leaf{Service: "web"}, Target{Service: "web"}, ""},
		{"name in another case", ca, certstest.Leaf{Service: "web"}, Target{Service: "Web"}, ""},
		{"other trust domain, trusted root", caB, certstest.Leaf{Service: "web"}, Target{Service: "web"}, ""},
		{"explicit datacenter", ca, certstest.Leaf{Service: "web", Datacenter: "dc2"}, Target{Service: "web", Datacenter: "dc2"}, ""},
		{"another service", ca, certstest.Leaf{Service: "db"}, Target{Service: "web"}, "want service"},
		{"another datacenter", ca, certstest.Leaf{Service: "web", Datacenter: "dc2"}, Target{Service: "web"}, "want service"},
		{"another namespace", ca, certstest.Leaf{Service: "web", Namespace: "ops"}, Target{Service: "web"}, "want service"},
		{"another CA", other, certstest.Leaf{Service: "web"}, Target{Service: "web"}, "unknown authority"},
		{"expired", ca, certstest.Leaf{Service: "web", NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Minute)}, Target{Service: "web"}, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := certstest.TLSCert(t, tc.server.Sign(t, tc.leaf))
			s := serve(t, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
			_, err := dial(s.addr(), cli.ClientConfig(tc.target))
			switch {
			case tc.reason == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.reason != "" && (err == nil || !strings.Contains(err.Error(), tc.reason)):
				t.Errorf("got %v, want a refusal with %q", err, tc.reason)
			}
		})
	}
}

// A resumed session is checked again: authorize runs on it, a caller
// still allowed resumes, and one that became unauthorized is refused on
// resumption although its session ticket is good.
func TestResumedSessionsAreAuthorizedAgain(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web"}))
	fc.SetLeaf("web-client", ca.Sign(t, certstest.Leaf{Service: "web-client"}))
	srv, _ := startManager(t, fc, "web", nil)
	cli, _ := startManager(t, fc, "web-client", nil)

	var allow atomic.Bool
	allow.Store(true)
	var calls atomic.Int32
	s := serve(t, srv.ServerConfig(func(ctx context.Context, p Peer) error {
		calls.Add(1)
		if ctx == nil || ctx.Err() != nil {
			return errors.New("no live handshake context")
		}
		if !allow.Load() {
			return errDenied
		}
		return nil
	}))
	ccfg := cli.ClientConfig(Target{Service: "web"})
	for _, tlsMax := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		calls.Store(0)
		allow.Store(true)
		c := ccfg.Clone()
		c.MaxVersion = tlsMax
		c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		if cs, err := dial(s.addr(), c); err != nil || cs.DidResume {
			t.Fatalf("TLS %x first handshake: resumed=%v err=%v", tlsMax, cs.DidResume, err)
		}
		cs, err := dial(s.addr(), c)
		if err != nil || !cs.DidResume {
			t.Fatalf("TLS %x second handshake: resumed=%v err=%v (server: %v)", tlsMax, cs.DidResume, err, s.lastErr())
		}
		if n := calls.Load(); n != 2 {
			t.Errorf("TLS %x: authorize ran %d times for a full and a resumed handshake, want 2", tlsMax, n)
		}
		allow.Store(false)
		if _, err := dial(s.addr(), c); err == nil {
			t.Errorf("TLS %x: resumed session of a denied caller let through", tlsMax)
		}
		if serr := s.lastErr(); !errors.Is(serr, errDenied) {
			t.Errorf("TLS %x: server error %v, want the denial", tlsMax, serr)
		}
	}
}

// Leaves and roots rotate (a new CA joins, leaves move to it, the old CA
// leaves) while handshakes run back to back from several goroutines: not
// one fails, and at the end both sides present the new CA's leaves.
func TestRotationUnderConcurrentHandshakes(t *testing.T) {
	old := certstest.NewCA(t, "ca-old", tdA)
	next := certstest.NewCA(t, "ca-new", tdA)
	fsrv := certstest.NewConsul(old)
	fcli := certstest.NewConsul(old)
	fsrv.SetLeaf("web", old.Sign(t, certstest.Leaf{Service: "web"}))
	fcli.SetLeaf("web-client", old.Sign(t, certstest.Leaf{Service: "web-client"}))
	srv, _ := startManager(t, fsrv, "web", nil)
	cli, _ := startManager(t, fcli, "web-client", nil)
	s := serve(t, srv.ServerConfig(nil))
	ccfg := cli.ClientConfig(Target{Service: "web"})
	ccfg.ClientSessionCache = nil // full handshakes, so every one meets the current leaves

	ctx, cancel := context.WithCancel(context.Background())
	var ok, failed atomic.Int32
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := dial(s.addr(), ccfg); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	step := func(what string, f func()) {
		f()
		before := ok.Load()
		waitFor(t, "handshakes after "+what, func() bool { return ok.Load() >= before+20 })
	}
	serial := func(m *Manager) string { return m.Snapshot().LeafSerial }
	step("both trust the new CA", func() {
		fsrv.SetRoots(old, next)
		fcli.SetRoots(old, next)
		waitFor(t, "two roots", func() bool { return srv.Snapshot().Roots == 2 && cli.Snapshot().Roots == 2 })
	})
	newSrv := next.Sign(t, certstest.Leaf{Service: "web"})
	newCli := next.Sign(t, certstest.Leaf{Service: "web-client"})
	step("new leaves", func() {
		fsrv.SetLeaf("web", newSrv)
		fcli.SetLeaf("web-client", newCli)
		waitFor(t, "new leaves", func() bool {
			return serial(srv) == SerialString(certstest.TLSCert(t, newSrv).Leaf.SerialNumber) &&
				serial(cli) == SerialString(certstest.TLSCert(t, newCli).Leaf.SerialNumber)
		})
	})
	step("old CA gone", func() {
		fsrv.SetRoots(next)
		fcli.SetRoots(next)
		waitFor(t, "one root", func() bool { return srv.Snapshot().Roots == 1 && cli.Snapshot().Roots == 1 })
	})
	cancel()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d handshakes failed during the rotation; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	cs, err := dial(s.addr(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := cs.PeerCertificates[0].Issuer.CommonName; got != next.Cert.Subject.CommonName {
		t.Errorf("server presents a leaf of %q after the rotation", got)
	}
	t.Logf("%d handshakes during the rotation", ok.Load())

	// A peer still on the old CA is now refused.
	oldCert := certstest.TLSCert(t, old.Sign(t, certstest.Leaf{Service: "web-client"}))
	if _, err := dial(s.addr(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{oldCert}}); err == nil {
		t.Error("a leaf of the removed root was accepted")
	}
}
