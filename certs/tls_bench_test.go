package certs

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/meshlet/meshlet/certs/certstest"
)

// BenchmarkHandshake measures one mTLS handshake between two managers
// (both sides' CPU, over loopback TCP), full and resumed; verification and
// the authorization hook (a no-op here) run in both.
func BenchmarkHandshake(b *testing.B) {
	ca := certstest.NewCA(b, "ca", tdA)
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(b, certstest.Leaf{Service: "web"}))
	fc.SetLeaf("web-client", ca.Sign(b, certstest.Leaf{Service: "web-client"}))
	srv := benchManager(b, fc, "web")
	cli := benchManager(b, fc, "web-client")
	scfg := srv.ServerConfig(func(context.Context, Peer) error { return nil })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name   string
		resume bool
	}{{"full", false}, {"resumed", true}} {
		b.Run(tc.name, func(b *testing.B) {
			ccfg := cli.ClientConfig(Target{Service: "web"})
			if !tc.resume {
				ccfg.ClientSessionCache = nil
			}
			resumed := 0
			for b.Loop() {
				if pipeHandshake(b, ln, scfg, ccfg) {
					resumed++
				}
			}
			b.ReportMetric(float64(resumed)/float64(b.N), "resumed/op")
		})
	}
}

func benchManager(b *testing.B, fc *certstest.Consul, service string) *Manager {
	m, err := New(Config{Consul: fc, Service: service})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go m.Run(ctx)
	<-m.Ready()
	return m
}

// pipeHandshake shakes hands and exchanges a byte (so the client takes
// the session ticket), and reports whether the session was resumed.
func pipeHandshake(b *testing.B, ln net.Listener, scfg, ccfg *tls.Config) bool {
	// Loopback, not net.Pipe: a pipe has no buffer, and the TLS 1.3 server
	// writes its session ticket while the client writes its first byte.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(a, scfg)
		if err := s.Handshake(); err != nil {
			errc <- err
			return
		}
		var x [1]byte
		_, err := s.Read(x[:])
		if err == nil {
			_, err = s.Write(x[:])
		}
		errc <- err
	}()
	cl := tls.Client(c, ccfg)
	if err := cl.Handshake(); err != nil {
		b.Fatal(err)
	}
	if _, err := cl.Write([]byte{1}); err != nil {
		b.Fatal(err)
	}
	var x [1]byte
	if _, err := cl.Read(x[:]); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return cl.ConnectionState().DidResume
}
