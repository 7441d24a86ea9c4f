package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/clusterlab"
	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// AppPolicy is the least a sidecar of "app" needs, as README's "Running
// with a production Consul" gives it.
const appPolicy = `service "app" { policy = "write" }
service "app-sidecar-proxy" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
`

// readOnlyPolicy lacks service:write on the app and node:read.
const readOnlyPolicy = `service_prefix "" { policy = "read" }
`

// token makes an ACL token with a policy of rules, and returns its secret.
func token(t *testing.T, c *clusterlab.Cluster, name, rules string) string {
	t.Helper()
	acl := c.ServerClient(c.Servers[0]).ACL()
	p, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("creating policy %s: %v", name, err)
	}
	tok, _, err := acl.TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatalf("creating a token for %s: %v", name, err)
	}
	return tok.SecretID
}

// stopMeshlet stops a sidecar with SIGTERM and waits for it.
func stopMeshlet(t *testing.T, m *netlab.Proc) {
	t.Helper()
	m.Signal(syscall.SIGTERM)
	if exited, _ := m.Wait(20 * time.Second); !exited {
		t.Fatalf("meshlet did not stop:\n%s", meshlab.Tail(m.Output()))
	}
}

// readyzHasAll waits until /readyz answers code (0: any) with every part
// in it.
func readyzHasAll(ctx context.Context, a *clusterlab.Agent, code int, limit time.Duration, parts ...string) (string, error) {
	var body string
	err := meshlab.Poll(ctx, limit, fmt.Sprintf("/readyz %d with %q", code, parts), func() error {
		got, b, err := a.AdminGet(ctx, "/readyz")
		if err != nil {
			return err
		}
		body = strings.TrimSpace(b)
		if code != 0 && got != code {
			return fmt.Errorf("readyz %d: %s", got, body)
		}
		for _, p := range parts {
			if !strings.Contains(body, p) {
				return fmt.Errorf("readyz: %s", body)
			}
		}
		return nil
	})
	return body, err
}

// With ACLs on (default deny) and HTTPS to the client agents: meshlet works
// with the least-privilege token of README (from CONSUL_HTTP_TOKEN_FILE)
// over CONSUL_HTTP_SSL with CONSUL_CACERT; a token that lacks permissions
// is told by name (service:write to register, service:read and node:read
// to see instances), and a CA that did not sign the agent's certificate is
// a clear error.
func TestClusterACLAndTLS(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, clusterlab.Options{ACL: true, TLS: true})
	addInstances(ctx, t, c, 1, nil)
	tokenFile := filepath.Join(c.Lab.Dir(), "app-token")
	if err := os.WriteFile(tokenFile, []byte(token(t, c, "app", appPolicy)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsEnv := []string{"CONSUL_HTTP_ADDR=127.0.0.1:8501", "CONSUL_HTTP_SSL=true", "CONSUL_CACERT=" + c.TLS.CA}

	// The least-privilege token, over HTTPS.
	app, m := appHost(ctx, t, c, append(tlsEnv, "CONSUL_HTTP_TOKEN_FILE="+tokenFile)...)
	if err := app.WaitReady(ctx, m, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitAppPassing(ctx, t, c)
	vip, err := app.ResolveVIP("web.local")
	if err != nil {
		t.Fatal(err)
	}
	client := app.AppClient(vip, "web.local")
	if h := client.Get(ctx, "/", ""); !h.OK() || h.Instance != "web-1" {
		t.Fatalf("request with the least-privilege token: %+v", h)
	}
	if out := m.Output(); strings.Contains(out, "403") || strings.Contains(out, "ACL") {
		t.Errorf("the least-privilege token met a refusal:\n%s", meshlab.Tail(out))
	}
	stopMeshlet(t, m)

	// A token that may read services only.
	m, err = app.StartMeshlet(append(tlsEnv, "SERVICE_NAME=app", "SERVICE_PORT=8080", "SERVICE_CHECK_HTTP=/health",
		"CONSUL_HTTP_TOKEN="+token(t, c, "read-only", readOnlyPolicy)))
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, m)
	if err := app.WaitReady(ctx, m, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := meshlab.Poll(ctx, 20*time.Second, "the missing service:write named in the log", func() error {
		if !strings.Contains(m.Output(), `missing consul ACL permission service:write on \"app\": give meshlet's token (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE) a policy with it`) {
			return fmt.Errorf("not yet")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if h := client.Get(ctx, "/", ""); h.Status != http.StatusServiceUnavailable {
		t.Errorf("without node:read no instance is visible: %+v, want 503", h)
	}
	body, err := readyzHasAll(ctx, app, http.StatusOK, 20*time.Second, `health of "web": consul's ACLs hide instances: meshlet's token (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE) lacks service:read on "web" or node:read`)
	if err != nil {
		t.Error(err)
	}
	t.Logf("read-only token: /readyz %q", body)
	stopMeshlet(t, m)

	// HTTPS with a CA that did not sign the agent's certificate. (Ready or
	// not: the saved state of the runs before routes.)
	m, err = app.StartMeshlet([]string{"CONSUL_HTTP_ADDR=127.0.0.1:8501", "CONSUL_HTTP_SSL=true", "CONSUL_CACERT=" + c.TLS.OtherCA,
		"CONSUL_HTTP_TOKEN_FILE=" + tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, m)
	body, err = readyzHasAll(ctx, app, 0, 20*time.Second,
		"the consul agent's TLS certificate is not signed by the CA meshlet trusts (CONSUL_CACERT, CONSUL_CAPATH)")
	if err != nil {
		t.Error(err)
	}
	t.Logf("wrong CA: /readyz %q; test took %v", body, time.Since(start).Round(time.Millisecond))
}
