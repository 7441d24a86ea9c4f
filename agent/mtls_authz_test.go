package agent

import (
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
)

// The inbound's authorize calls go to an HTTPS agent with the CA of
// CONSUL_CACERT, as every other call to Consul does (they once used the
// system's roots and failed with "certificate signed by unknown
// authority").
func TestAuthorizerUsesConsulTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/agent/connect/authorize" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"Authorized":true,"Reason":"ok"}`))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", ca)
	authz, err := newAuthorizer(Config{Consul: srv.Listener.Addr().String()}, (&net.Dialer{}).DialContext)
	if err != nil {
		t.Fatal(err)
	}
	got, err := authz.ConnectAuthorize(&api.AgentAuthorizeParams{Target: "app", ClientCertURI: "spiffe://x.consul/ns/default/dc/dc1/svc/caller"})
	if err != nil {
		t.Fatalf("authorize over HTTPS with CONSUL_CACERT: %v", err)
	}
	if !got.Authorized {
		t.Errorf("authorize = %+v, want authorized", got)
	}
}
