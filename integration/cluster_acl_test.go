package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/integration/clusterlab"
	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// readmePolicy is the ACL policy README's "Running with a production
// Consul" gives a sidecar of "app" (its first hcl block after
// "**ACLs.**"), for the service named name: the tests use README's very
// text, so that README cannot drift from what is proven.
func readmePolicy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**ACLs.**")
	if ok {
		_, rest, ok = strings.Cut(rest, "```hcl\n")
	}
	var block string
	if ok {
		block, _, ok = strings.Cut(rest, "```")
	}
	if !ok || !strings.Contains(block, `service "app"`) {
		t.Fatal(`README.md has no hcl block with service "app" after "**ACLs.**"`)
	}
	return strings.ReplaceAll(block, `"app`, `"`+name)
}

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

// refusals are the lines of a meshlet log where Consul refused its token.
func refusals(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		for _, r := range []string{"403", "Permission denied", "missing consul ACL permission", "refused meshlet's ACL token", "ACLs hide", "ACL not found"} {
			if strings.Contains(l, r) {
				out = append(out, l)
				break
			}
		}
	}
	return out
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
// a clear error. The tokens have README's policy, mTLS included (see
// mtlsUnderACLs).
func TestClusterACLAndTLS(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, clusterlab.Options{ACL: true, TLS: true, ServerHCL: []string{"connect { enabled = true }"}})
	addInstances(ctx, t, c, 1, nil)
	tokenFile := filepath.Join(c.Lab.Dir(), "app-token")
	if err := os.WriteFile(tokenFile, []byte(token(t, c, "app", readmePolicy(t, "app"))+"\n"), 0o600); err != nil {
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
	mtlsUnderACLs(ctx, t, c, app, m, tlsEnv)
	// web has no Connect instance: the default deny of intentions does not
	// apply to it in permissive mode.
	if h := client.Get(ctx, "/", ""); !h.OK() || h.Instance != "web-1" {
		t.Errorf("request to plaintext web after mTLS came up: %+v", h)
	}
	if l := refusals(m.Output()); len(l) > 0 {
		t.Errorf("the least-privilege token met a refusal:\n%s", strings.Join(l, "\n"))
	}
	stopMeshlet(t, m)

	// A token that may read services only. (mTLS off: without a leaf
	// meshlet is not ready, and this part is about what it can see.)
	m, err = app.StartMeshlet(append(tlsEnv, "SERVICE_NAME=app", "SERVICE_PORT=8080", "SERVICE_CHECK_HTTP=/health",
		"CONSUL_HTTP_TOKEN="+token(t, c, "read-only", readOnlyPolicy)), "--mtls", "off")
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
	if out := m.Output(); !strings.Contains(out, `msg="consul's ACLs refuse the registration (err says what to fix); will retry"`) || strings.Contains(out, "cannot reach consul") {
		t.Errorf("a refused registration is not logged as a refusal:\n%s", meshlab.Tail(out))
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

// mtlsUnderACLs proves README's policy for mTLS, with the app's meshlet
// (app) running: the app's sidecar is registered and its meshlet holds a
// leaf; a caller's meshlet, with README's policy for its own identity,
// reaches the app over mTLS once an intention allows it (with ACLs'
// default deny, intentions deny by default too), and honours a deny.
func mtlsUnderACLs(ctx context.Context, t *testing.T, c *clusterlab.Cluster, app *clusterlab.Agent, appMeshlet *netlab.Proc, tlsEnv []string) {
	t.Helper()
	start := time.Now()
	if err := meshlab.Poll(ctx, 20*time.Second, "the app's sidecar in /v1/health/connect/app", func() error {
		entries, _, err := app.Consul.Health().Connect("app", "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != 1 || entries[0].Service.Port != 21000 {
			return fmt.Errorf("passing connect entries: %d", len(entries))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := meshlab.Poll(ctx, 20*time.Second, "the app's leaf in /v1/state", func() error {
		code, body, err := app.AdminGet(ctx, "/v1/state")
		if err != nil {
			return err
		}
		var st struct {
			MTLS struct{ Certs *certs.Snapshot }
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return fmt.Errorf("/v1/state %d: %w", code, err)
		}
		if st.MTLS.Certs == nil || st.MTLS.Certs.LeafSerial == "" || st.MTLS.Certs.Service != "app" {
			return fmt.Errorf("/v1/state mtls: %+v", st.MTLS.Certs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := readyzHasAll(ctx, app, http.StatusOK, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// The caller: a client-only sidecar presenting "caller", mTLS only.
	allow := &api.Intention{SourceName: "caller", DestinationName: "app", Action: api.IntentionActionAllow}
	if _, err := app.Consul.Connect().IntentionUpsert(allow, nil); err != nil {
		t.Fatal(err)
	}
	host, err := c.AddAgentHost(ctx, "caller")
	if err != nil {
		t.Fatal(err)
	}
	m, err := host.StartMeshlet(append(tlsEnv, "CONSUL_HTTP_TOKEN="+token(t, c, "caller", readmePolicy(t, "caller"))),
		"--mtls", "strict", "--mtls-identity", "caller")
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, m)
	if err := host.WaitReady(ctx, m, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	vip, err := host.ResolveVIP("app.local")
	if err != nil {
		t.Fatal(err)
	}
	client := host.AppClient(vip, "app.local")
	var h meshlab.Hit
	if err := meshlab.Poll(ctx, 15*time.Second, "the caller to reach the app over mTLS", func() error {
		if h = client.Get(ctx, "/", ""); !h.OK() || h.Instance != "app-1" {
			return fmt.Errorf("answer %+v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Through the app's inbound listener, with the caller's identity.
	if !slices.ContainsFunc(strings.Split(appMeshlet.Output(), "\n"), func(l string) bool {
		return strings.Contains(l, "inbound: connection") && strings.Contains(l, "svc/caller")
	}) {
		t.Errorf("the app's inbound logged no connection of svc/caller")
	}

	denied := time.Now()
	deny := &api.Intention{SourceName: "caller", DestinationName: "app", Action: api.IntentionActionDeny}
	if _, err := app.Consul.Connect().IntentionUpsert(deny, nil); err != nil {
		t.Fatal(err)
	}
	if err := meshlab.Poll(ctx, 5*time.Second, "the deny to refuse the caller", func() error {
		if h = client.Get(ctx, "/", ""); h.Status != http.StatusForbidden || h.Error != "denied-by-intention" {
			return fmt.Errorf("answer %+v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(denied)
	if took > 2*time.Second {
		t.Errorf("the deny took %v to refuse the caller, want a couple of seconds at most", took)
	}
	if l := refusals(m.Output()); len(l) > 0 {
		t.Errorf("the caller's least-privilege token met a refusal:\n%s", strings.Join(l, "\n"))
	}
	t.Logf("mTLS under ACLs: deny honoured in %v; part took %v", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	stopMeshlet(t, m)
}
