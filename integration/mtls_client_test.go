package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/integration/meshlab"
)

// certs' client side against Consul's built-in proxy as the server
// (`consul connect proxy -sidecar-for`), before outbound uses it: a
// client with the "web-client" leaf from the real Consul reaches the
// app behind the proxy; expecting another service there is refused by
// the client; a deny intention makes the proxy refuse the client.
func TestMTLSClientConfigWithConsulProxyServer(t *testing.T) {
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1, NoMeshlet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host, err := w.Lab.AddHost("api1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Start("webinstance", nil, w.Bins.WebInstance, "-listen", "127.0.0.1:8080", "-name", "api1"); err != nil {
		t.Fatal(err)
	}
	if err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "api1", Name: "api", Address: host.IP.String(), Port: 8080,
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: 21000,
			Proxy: &api.AgentServiceConnectProxyConfig{LocalServiceAddress: "127.0.0.1", LocalServicePort: 8080}}},
	}); err != nil {
		t.Fatal(err)
	}
	proxy, err := host.Start("consul-proxy", []string{"CONSUL_HTTP_ADDR=" + w.ConsulAddr()}, w.Bins.Consul, "connect", "proxy", "-sidecar-for", "api1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consul connect proxy log:\n%s", lastLines(proxy.Output(), 30))
		}
	})

	// The client's trust material comes from the real Consul.
	m, err := certs.New(certs.Config{Consul: w.Consul.Agent(), Service: "web-client",
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(ctx)
	mdone := make(chan struct{})
	go func() { m.Run(mctx); close(mdone) }()
	defer func() { mcancel(); <-mdone }()
	select {
	case <-m.Ready():
	case <-ctx.Done():
		t.Fatalf("no leaf from consul: %+v", m.Snapshot())
	}

	caller, err := w.Lab.AddHost("caller")
	if err != nil {
		t.Fatal(err)
	}
	sidecar := fmt.Sprintf("%s:21000", host.IP)
	get := func(target certs.Target) error {
		raw, err := caller.DialContext(ctx, "tcp", sidecar)
		if err != nil {
			return err
		}
		defer raw.Close()
		c := tls.Client(raw, m.ClientConfig(target))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err != nil {
			return err
		}
		if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); err != nil {
			return err
		}
		status, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(status, "HTTP/1.1 200") {
			return fmt.Errorf("status %q", status)
		}
		return nil
	}
	if err := meshlab.Poll(ctx, 30*time.Second, "an answer from the app behind consul's proxy", func() error {
		select {
		case <-proxy.Done():
			return meshlab.StopPolling(fmt.Errorf("consul connect proxy exited: %s", meshlab.Tail(proxy.Output())))
		default:
		}
		return get(certs.Target{Service: "api"})
	}); err != nil {
		t.Fatal(err)
	}
	if err := get(certs.Target{Service: "db"}); err == nil || !strings.Contains(err.Error(), "want service") {
		t.Errorf("expecting db at api's sidecar: %v, want a refusal of the server's identity", err)
	}

	lab := &mtlsLab{w: w}
	lab.consulCLI(t, "intention", "create", "-deny", "web-client", "api")
	if err := meshlab.Poll(ctx, 10*time.Second, "consul's proxy to refuse the denied client", func() error {
		if err := get(certs.Target{Service: "api"}); err == nil {
			return fmt.Errorf("still served")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
