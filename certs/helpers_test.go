package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshlet/meshlet/certs/certstest"
)

const (
	tdA = "aaaaaaaa-0000-0000-0000-000000000001.consul"
	tdB = "bbbbbbbb-0000-0000-0000-000000000002.consul"
)

// startManager runs a Manager for service on fc until the test ends and
// waits until it is ready.
func startManager(t *testing.T, fc *certstest.Consul, service string, mod func(*Config)) (*Manager, *certstest.LogBuffer) {
	t.Helper()
	logs := &certstest.LogBuffer{}
	cfg := Config{
		Consul:   fc,
		Service:  service,
		WaitTime: 2 * time.Second,
		Backoff:  func(int) time.Duration { return 20 * time.Millisecond },
		Log:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-m.Ready():
	case <-time.After(5 * time.Second):
		t.Fatalf("manager for %s not ready; log:\n%s", service, logs)
	}
	return m, logs
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// server serves TLS on loopback with cfg: each connection, once its
// handshake passed, answers one byte with one byte. Handshake errors go
// to errs.
type server struct {
	ln   net.Listener
	errs chan error
}

func serve(t *testing.T, cfg *tls.Config) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, errs: make(chan error, 1000)}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					select {
					case s.errs <- err:
					default:
					}
					return
				}
				var b [1]byte
				if _, err := tc.Read(b[:]); err == nil {
					tc.Write(b[:])
				}
			}()
		}
	}()
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// lastErr returns the server's latest handshake error, waiting a little.
func (s *server) lastErr() error {
	select {
	case err := <-s.errs:
		return err
	case <-time.After(2 * time.Second):
		return nil
	}
}

// dial connects with cfg and exchanges one byte, so that a TLS 1.3 client
// also learns about a refusal of its certificate (sent after its
// handshake) and receives the session ticket.
func dial(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return tc.ConnectionState(), err
	}
	if _, err := tc.Write([]byte{'x'}); err != nil {
		return tc.ConnectionState(), err
	}
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil {
		return tc.ConnectionState(), err
	}
	return tc.ConnectionState(), nil
}

var errDenied = errors.New("denied by test")

func bigInt(n int64) *big.Int { return big.NewInt(n) }
