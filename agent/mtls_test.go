package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/agent/registration"
	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/certs/certstest"
	"github.com/meshlet/meshlet/upstream"
)

func TestParseConfigMTLS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		mode     upstream.MTLSMode
		identity string
		err      string
	}{
		{name: "default", mode: upstream.MTLSPermissive},
		{name: "flag", args: []string{"--mtls", "strict", "--mtls-identity", "web-client"}, mode: upstream.MTLSStrict, identity: "web-client"},
		{name: "variables", env: map[string]string{"MESHLET_MTLS": "off", "MESHLET_MTLS_IDENTITY": "api"}, mode: upstream.MTLSOff, identity: "api"},
		{name: "flag over variable", args: []string{"--mtls=permissive"}, env: map[string]string{"MESHLET_MTLS": "off"}, mode: upstream.MTLSPermissive},
		{name: "bad mode", args: []string{"--mtls", "on"}, err: `--mtls: mtls mode "on": want off, permissive or strict`},
		{name: "bad mode in variable", env: map[string]string{"MESHLET_MTLS": "STRICT"}, err: "MESHLET_MTLS: "},
		{name: "bad identity", args: []string{"--mtls-identity", "web/client"}, err: `--mtls-identity: "web/client" is not a service name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.args, env(tc.env), io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.MTLS != tc.mode || c.MTLSIdentity != tc.identity {
				t.Errorf("mode %q identity %q, want %q %q", c.MTLS, c.MTLSIdentity, tc.mode, tc.identity)
			}
		})
	}
}

func TestMTLSIdentity(t *testing.T) {
	app := []registration.Service{{Name: "web"}}
	for _, tc := range []struct {
		name     string
		mode     upstream.MTLSMode
		services []registration.Service
		flag     string
		want     string
		err      string
	}{
		{name: "registered app", mode: upstream.MTLSPermissive, services: app, want: "web"},
		{name: "the app wins over the flag", mode: upstream.MTLSStrict, services: app, flag: "other", want: "web"},
		{name: "client-only with the flag", mode: upstream.MTLSStrict, flag: "web-client", want: "web-client"},
		{name: "client-only without: plaintext", mode: upstream.MTLSPermissive},
		{name: "strict without any identity", mode: upstream.MTLSStrict, err: "--mtls: strict needs an identity to present"},
		{name: "off", mode: upstream.MTLSOff, services: app, flag: "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{MTLS: tc.mode, MTLSIdentity: tc.flag, Services: tc.services}
			err := c.checkMTLS()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := c.mtlsIdentity()
			if got != tc.want {
				t.Errorf("identity %q, want %q", got, tc.want)
			}
			logs := &certstest.LogBuffer{}
			m, err := newCerts(c, certstest.NewConsul(), slog.New(slog.NewTextHandler(logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if (m != nil) != (tc.want != "") {
				t.Errorf("manager %v for identity %q", m, tc.want)
			}
			if tc.want == "" && tc.mode != upstream.MTLSOff && !strings.Contains(logs.String(), "outbound connects in plaintext") {
				t.Errorf("no word of plaintext in the log:\n%s", logs)
			}
		})
	}
}

// /readyz waits for the first roots and leaf, then stays ready while
// Consul is away, naming the leaf that keeps serving and the failure.
func TestCertsReadiness(t *testing.T) {
	ca := certstest.NewCA(t, "ca1", "11111111-2222-3333-4444-555555555555.consul")
	fc := certstest.NewConsul(ca)
	m, err := certs.New(certs.Config{Consul: fc, Service: "web", WaitTime: time.Second,
		Backoff: func(int) time.Duration { return 10 * time.Millisecond }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	a := &Agent{certs: m}

	poll := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not ready %q, notes %q", what, a.certsNotReady(), a.certsNotes())
			}
		}
	}
	poll("before the leaf", func() bool {
		why := a.certsNotReady()
		return len(why) == 1 && strings.Contains(why[0], `waiting for the Connect CA roots and the leaf of "web"`) && strings.Contains(why[0], "no leaf")
	})
	lc := ca.Sign(t, certstest.Leaf{Service: "web"})
	fc.SetLeaf("web", lc)
	poll("after the leaf", func() bool { return len(a.certsNotReady()) == 0 && len(a.certsNotes()) == 0 })

	fc.Fail(errors.New("connection refused"))
	poll("consul away", func() bool {
		n := a.certsNotes()
		return len(a.certsNotReady()) == 0 && len(n) == 1 && strings.Contains(n[0], "serving the last leaf") &&
			strings.Contains(n[0], "connection refused") && strings.Contains(n[0], m.Snapshot().LeafSerial)
	})

	// A leaf that expires while Consul is away: not ready any more.
	fc.Fail(nil)
	short := ca.Sign(t, certstest.Leaf{Service: "web", NotAfter: time.Now().Add(1500 * time.Millisecond)})
	fc.SetLeaf("web", short)
	poll("the short leaf", func() bool { return time.Until(m.Snapshot().LeafNotAfter) < 2*time.Second })
	fc.Fail(errors.New("connection refused"))
	poll("the expired leaf", func() bool {
		why := a.certsNotReady()
		return len(why) == 1 && strings.Contains(why[0], "expired at") && strings.Contains(why[0], m.Snapshot().LeafSerial)
	})
}
