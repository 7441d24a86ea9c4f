package agent

import (
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// The inbound's authorizer reaches a Consul agent served over HTTPS with
// its own CA, as the CONSUL_* variables say, like the agent's main
// client: with a client of its own it once ignored them, so every mTLS
// caller was refused.
func TestAuthorizerHonoursConsulTLSSettings(t *testing.T) {
	var asked string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"Authorized": true, "Reason": "ACLs disabled"}`))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", ca)
	t.Setenv("CONSUL_TLS_SERVER_NAME", "example.com") // what httptest's certificate names
	authz, err := newAuthorizer(Config{Consul: strings.TrimPrefix(srv.URL, "https://")}, (&net.Dialer{}).DialContext)
	if err != nil {
		t.Fatal(err)
	}
	got, err := authz.ConnectAuthorize(&api.AgentAuthorizeParams{Target: "web",
		ClientCertURI: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/client", ClientCertSerial: "01"})
	if err != nil {
		t.Fatalf("authorize over HTTPS with CONSUL_CACERT: %v", err)
	}
	if !got.Authorized || asked != "/v1/agent/connect/authorize" {
		t.Errorf("answer %+v from %q, want authorized by /v1/agent/connect/authorize", got, asked)
	}
}
