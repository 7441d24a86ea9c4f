package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// `meshlet run` registering an app also registers its Connect sidecar:
// the inbound listener on the app's address and port 21000, which
// /v1/health/connect/web lists as web's mTLS endpoint. The sidecar's
// health follows the app's check, and stopping meshlet removes both.
func TestMTLSSidecarRegistration(t *testing.T) {
	w := startWorld(t, meshlab.Options{NoMeshlet: true})
	s := addSidecar(t, w, "web1", []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=200ms"},
		"--drain-period", "300ms")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	health := w.Consul.Health()
	connectStatus := func() (string, *api.ServiceEntry, error) {
		entries, _, err := health.Connect("web", "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || len(entries) != 1 {
			return "", nil, fmt.Errorf("%d connect entries of web, %v", len(entries), err)
		}
		return entries[0].Checks.AggregatedStatus(), entries[0], nil
	}
	var entry *api.ServiceEntry
	if err := meshlab.Poll(ctx, 30*time.Second, "web's sidecar passing in /v1/health/connect/web", func() error {
		st, e, err := connectStatus()
		if err == nil && st != api.HealthPassing {
			err = fmt.Errorf("status %s", st)
		}
		entry = e
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sc := entry.Service
	if sc.Kind != api.ServiceKindConnectProxy || sc.ID != mtlsWebID+"-sidecar-proxy" || sc.Service != "web-sidecar-proxy" ||
		sc.Address != s.Host.IP.String() || sc.Port != 21000 || sc.Proxy == nil ||
		sc.Proxy.DestinationServiceName != "web" || sc.Proxy.DestinationServiceID != mtlsWebID || sc.Proxy.LocalServicePort != 8080 {
		t.Errorf("sidecar registration %+v, proxy %+v", sc, sc.Proxy)
	}
	// The listener is there: a TLS server that presents web's identity.
	_, body, err := s.AdminGet(ctx, "/v1/state")
	if err != nil || !strings.Contains(body, `"sidecar_id": "`+mtlsWebID+`-sidecar-proxy"`) || !strings.Contains(body, `"sidecar_port": 21000`) {
		t.Errorf("/v1/state registrations lack the sidecar (%v):\n%s", err, body)
	}

	for _, step := range []struct {
		healthy bool
		want    string
	}{{false, api.HealthCritical}, {true, api.HealthPassing}} {
		if err := s.SetAppHealth(ctx, step.healthy); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := meshlab.Poll(ctx, 10*time.Second, "the sidecar to follow the app to "+step.want, func() error {
			if st, _, err := connectStatus(); err != nil || st != step.want {
				return fmt.Errorf("status %q, %v", st, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("app's health set to %v: sidecar %s in /v1/health/connect after %v", step.healthy, step.want, time.Since(start).Round(time.Millisecond))
	}

	if err := s.Meshlet.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := s.Meshlet.Wait(15 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v", exited, err)
	}
	services, err := w.Consul.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	for id := range services {
		if strings.HasPrefix(id, mtlsWebID) {
			t.Errorf("%s still registered after meshlet stopped", id)
		}
	}
	if entries, _, err := health.Connect("web", "", false, nil); err != nil || len(entries) != 0 {
		t.Errorf("after the stop: %d connect entries of web, %v", len(entries), err)
	}
}

// Strict mode: only meshlet's inbound reaches the app's port. From
// another host, plaintext to the app's port is reset at once and
// plaintext to the inbound port is refused and logged, while Consul's
// proxy reaches the app over mTLS; the app's own check (from inside the
// namespace) still passes. With Consul gone, the last leaf keeps serving
// and /readyz says so. Stopping meshlet removes the rules.
func TestMTLSStrict(t *testing.T) {
	lab := startMTLSLab(t, "--mtls", "strict")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	appAddr := fmt.Sprintf("%s:8080", lab.web.IP)
	plain := func() error {
		c, err := lab.client.DialContext(ctx, "tcp", appAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		return keepAliveGet(c, bufio.NewReader(c))
	}
	start := time.Now()
	err := plain()
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("plaintext from another host to the app's port: %v, want refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("plaintext refused after %v, want at once (a reset)", d)
	}
	if _, err := lab.get(ctx); err != nil {
		t.Errorf("mTLS through consul's proxy: %v", err)
	}
	if out, err := lab.web.Run(ctx, "iptables", "-S", "MESHLET_INBOUND"); err != nil || !strings.Contains(out, "--dport 8080 -j REJECT") {
		t.Errorf("strict rules: %v\n%s", err, out)
	}

	before := len(lab.inboundLines("inbound: refused"))
	c, err := lab.client.DialContext(ctx, "tcp", fmt.Sprintf("%s:21000", lab.web.IP))
	if err != nil {
		t.Fatal(err)
	}
	if err := keepAliveGet(c, bufio.NewReader(c)); err == nil {
		t.Error("plaintext HTTP to the inbound port was answered")
	}
	c.Close()
	if err := meshlab.Poll(ctx, 5*time.Second, "the refusal of plaintext in the log", func() error {
		if l := lab.inboundLines("inbound: refused", "peer=none", "does not look like a TLS handshake"); len(l) <= before {
			return fmt.Errorf("not logged")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	lab.w.StopConsul()
	if err := meshlab.Poll(ctx, 15*time.Second, "/readyz to say the last leaf serves", func() error {
		code, body, err := lab.sidecar.AdminGet(ctx, "/readyz")
		if err != nil || code != http.StatusOK || !strings.Contains(body, "serving the last leaf") {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	_, body, _ := lab.sidecar.AdminGet(ctx, "/readyz")
	t.Logf("/readyz with consul gone: %q", strings.TrimSpace(body))

	if err := lab.inbound.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := lab.inbound.Wait(20 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v", exited, err)
	}
	if out, _ := lab.web.Run(ctx, "iptables", "-S"); strings.Contains(out, "MESHLET") {
		t.Errorf("rules left after meshlet stopped:\n%s", out)
	}
	if err := plain(); err != nil {
		t.Errorf("plaintext after meshlet stopped: %v", err)
	}

	// What a SIGKILLed meshlet would leave, removed by `meshlet intercept remove`.
	for _, args := range [][]string{{"-N", "MESHLET_INBOUND"}, {"-A", "MESHLET_INBOUND", "-p", "tcp", "--dport", "8080", "-j", "REJECT"}, {"-I", "INPUT", "-j", "MESHLET_INBOUND"}} {
		if out, err := lab.web.Run(ctx, "iptables", args...); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	if out, err := lab.web.Run(ctx, lab.w.Bins.Meshlet, "intercept", "remove"); err != nil {
		t.Fatalf("meshlet intercept remove: %v: %s", err, out)
	}
	if out, _ := lab.web.Run(ctx, "iptables", "-S"); strings.Contains(out, "MESHLET") {
		t.Errorf("rules left after meshlet intercept remove:\n%s", out)
	}
}
