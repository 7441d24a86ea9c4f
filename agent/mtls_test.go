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
		inbound  uint16
		err      string
	}{
		{name: "default", mode: upstream.MTLSPermissive, inbound: 21000},
		{name: "flag", args: []string{"--mtls", "strict", "--mtls-identity", "web-client"}, mode: upstream.MTLSStrict, identity: "web-client"},
		{name: "variables", env: map[string]string{"MESHLET_MTLS": "off", "MESHLET_MTLS_IDENTITY": "api"}, mode: upstream.MTLSOff, identity: "api"},
		{name: "flag over variable", args: []string{"--mtls=permissive"}, env: map[string]string{"MESHLET_MTLS": "off"}, mode: upstream.MTLSPermissive},
		{name: "bad mode", args: []string{"--mtls", "on"}, err: `--mtls: mtls mode "on": want off, permissive or strict`},
		{name: "bad mode in variable", env: map[string]string{"MESHLET_MTLS": "STRICT"}, err: "MESHLET_MTLS: "},
		{name: "bad identity", args: []string{"--mtls-identity", "web/client"}, err: `--mtls-identity: "web/client" is not a service name`},
		{name: "inbound port", args: []string{"--inbound-port", "21001"}, mode: upstream.MTLSPermissive, inbound: 21001},
		{name: "inbound port variable", env: map[string]string{"MESHLET_INBOUND_PORT": "21002"}, mode: upstream.MTLSPermissive, inbound: 21002},
		{name: "bad inbound port", args: []string{"--inbound-port", "0"}, err: `--inbound-port: "0" is not a port from 1 to 65535`},
		{name: "bad inbound port variable", env: map[string]string{"MESHLET_INBOUND_PORT": "70000"}, err: `MESHLET_INBOUND_PORT: "70000" is not a port`},
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
			if tc.inbound != 0 && c.InboundPort != tc.inbound {
				t.Errorf("inbound port %d, want %d", c.InboundPort, tc.inbound)
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

// runCerts runs a manager of web's trust material on fc until the test
// ends, retrying fast.
func runCerts(t *testing.T, fc *certstest.Consul) *certs.Manager {
	t.Helper()
	m, err := certs.New(certs.Config{Consul: fc, Service: "web", WaitTime: time.Second,
		Backoff: func(int) time.Duration { return 10 * time.Millisecond }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// /readyz waits for the first roots and leaf, then stays ready while
// Consul is away, naming the leaf that keeps serving and the failure.
func TestCertsReadiness(t *testing.T) {
	ca := certstest.NewCA(t, "ca1", "11111111-2222-3333-4444-555555555555.consul")
	fc := certstest.NewConsul(ca)
	m := runCerts(t, fc)
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

// A Consul with Connect disabled: permissive mode is ready (plaintext, as
// before Connect) and says why in a note; strict mode is not ready.
func TestCertsConnectDisabled(t *testing.T) {
	for _, mode := range []upstream.MTLSMode{upstream.MTLSPermissive, upstream.MTLSStrict} {
		t.Run(string(mode), func(t *testing.T) {
			fc := certstest.NewConsul()
			fc.Fail(errors.New("Unexpected response code: 500 (Connect must be enabled in order to use this endpoint)"))
			m := runCerts(t, fc)
			a := &Agent{cfg: Config{MTLS: mode}, certs: m}
			for deadline := time.Now().Add(5 * time.Second); len(m.Snapshot().Warnings) == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no warning from the failing watches")
				}
			}
			why, notes := a.certsNotReady(), a.certsNotes()
			if mode == upstream.MTLSStrict {
				if len(why) != 1 || !strings.Contains(why[0], "Connect must be enabled") {
					t.Errorf("strict: not ready %q, want the reason", why)
				}
				return
			}
			if len(why) != 0 || len(notes) != 1 || !strings.Contains(notes[0], "consul has Connect disabled") {
				t.Errorf("permissive: not ready %q, notes %q", why, notes)
			}
		})
	}
}
