package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/certs/certstest"
	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// mtlsLab is a web app with `meshlet run` beside it on one host (its
// inbound listener registered as the app's Connect sidecar), and Consul's
// built-in proxy as a caller on another.
type mtlsLab struct {
	w       *meshlab.World
	sidecar *meshlab.Sidecar
	web     *netlab.Host
	inbound *netlab.Proc // web1's meshlet
	client  *netlab.Host
	proxy   *netlab.Proc
}

const (
	mtlsUpstreamPort = 8181 // where Consul's proxy on the client host takes web's traffic
	mtlsWebID        = "web1-web-8080"
)

// startMTLSLab starts the lab; args go to web1's `meshlet run`.
func startMTLSLab(t *testing.T, args ...string) *mtlsLab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lab := &mtlsLab{w: startWorld(t, meshlab.Options{Service: "seed", Instances: 1, NoMeshlet: true})}
	w := lab.w
	lab.sidecar = addSidecar(t, w, "web1", []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=200ms"},
		append([]string{"--drain-period", "300ms"}, args...)...)
	lab.web, lab.inbound = lab.sidecar.Host, lab.sidecar.Meshlet
	t.Cleanup(func() {
		if t.Failed() && lab.proxy != nil {
			t.Logf("consul connect proxy log:\n%s", lastLines(lab.proxy.Output(), 30))
		}
	})
	if err := lab.sidecar.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := meshlab.Poll(ctx, 30*time.Second, "web's sidecar to be passing in /v1/health/connect/web", func() error {
		_, err := lab.connectEntry(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}

	var err error
	if lab.client, err = w.Lab.AddHost("client"); err != nil {
		t.Fatal(err)
	}
	if lab.proxy, err = lab.client.Start("consul-proxy", []string{"CONSUL_HTTP_ADDR=" + w.ConsulAddr()},
		w.Bins.Consul, "connect", "proxy", "-service", "web-client", "-upstream", fmt.Sprintf("web:%d", mtlsUpstreamPort)); err != nil {
		t.Fatal(err)
	}
	if err := meshlab.Poll(ctx, 30*time.Second, "a first answer through consul's proxy", func() error {
		select {
		case <-lab.proxy.Done():
			return meshlab.StopPolling(fmt.Errorf("consul connect proxy exited: %s", meshlab.Tail(lab.proxy.Output())))
		default:
		}
		_, err := lab.get(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return lab
}

// connectEntry returns the one passing instance of web in
// /v1/health/connect/web: what callers dial for mTLS.
func (lab *mtlsLab) connectEntry(ctx context.Context) (*api.ServiceEntry, error) {
	entries, _, err := lab.w.Consul.Health().Connect("web", "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if len(entries) != 1 {
		return nil, fmt.Errorf("%d passing connect entries of web", len(entries))
	}
	return entries[0], nil
}

// get makes one request on a new connection through Consul's proxy.
func (lab *mtlsLab) get(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", mtlsUpstreamPort), nil)
	if err != nil {
		return "", err
	}
	resp, err := lab.client.HTTPClient(3 * time.Second).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || string(b) != "web1\n" {
		return "", fmt.Errorf("answer %d %q", resp.StatusCode, b)
	}
	return string(b), nil
}

// consulCLI runs the consul command on the Consul host.
func (lab *mtlsLab) consulCLI(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := lab.w.ConsulHost.Command(ctx, lab.w.Bins.Consul, args...)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=127.0.0.1:8500")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("consul %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inboundLines returns the inbound's log lines that contain all of want.
func (lab *mtlsLab) inboundLines(want ...string) []string {
	var out []string
	for _, l := range strings.Split(lab.inbound.Output(), "\n") {
		ok := true
		for _, s := range want {
			ok = ok && strings.Contains(l, s)
		}
		if ok && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Consul's built-in proxy, as a caller, reaches an app behind meshlet's
// inbound listener over Connect mTLS: it finds the inbound through the
// sidecar registration, accepts inbound's leaf for "web", and inbound
// accepts its leaf for "web-client". A deny intention then refuses new
// connections within about a second and closes the one already open
// within a few seconds; removing it lets callers in again.
func TestMTLSInboundWithConsulProxyCaller(t *testing.T) {
	lab := startMTLSLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 5 {
		if _, err := lab.get(ctx); err != nil {
			t.Fatalf("request %d through consul's proxy: %v", i, err)
		}
	}
	if n := len(lab.inboundLines("inbound: connection", "svc/web-client")); n < 5 {
		t.Errorf("inbound logged %d connections of web-client, want at least 5", n)
	}

	// The trust material is Consul's: /v1/state of the inbound host.
	snap := lab.state(t)
	if !snap.Ready || !strings.HasSuffix(snap.TrustDomain, ".consul") || snap.LeafSerial == "" ||
		snap.LeafURI != "spiffe://"+snap.TrustDomain+"/ns/default/dc/dc1/svc/web" || time.Until(snap.LeafNotAfter) < time.Hour {
		t.Errorf("state %+v", snap)
	}

	// A connection opened before the deny, kept alive.
	open, err := lab.client.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", mtlsUpstreamPort))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	br := bufio.NewReader(open)
	if err := keepAliveGet(open, br); err != nil {
		t.Fatalf("request on the connection kept open: %v", err)
	}
	closed := make(chan time.Time, 1)
	go func() {
		open.SetReadDeadline(time.Now().Add(30 * time.Second))
		io.Copy(io.Discard, br)
		closed <- time.Now()
	}()

	// Timed from the start of the CLI, which returns only once Consul
	// applied the intention (and meshlet may act on it meanwhile): an
	// upper bound that includes the CLI's own time.
	denied := time.Now()
	lab.consulCLI(t, "intention", "create", "-deny", "web-client", "web")
	cliTook := time.Since(denied)
	var refusedAfter time.Duration
	for time.Since(denied) < 10*time.Second {
		if _, err := lab.get(ctx); err != nil {
			refusedAfter = time.Since(denied)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if refusedAfter == 0 {
		t.Fatal("new connections still served 10s after the deny")
	}
	// Within a second (the decision TTL) on an idle machine, plus the
	// CLI's time; the margin is for a loaded one.
	if refusedAfter > 3*time.Second {
		t.Errorf("new connections refused %v after the deny, want about 1s", refusedAfter)
	}
	var closedAfter time.Duration
	select {
	case at := <-closed:
		closedAfter = at.Sub(denied)
	case <-time.After(15 * time.Second):
		t.Fatal("the connection opened before the deny is still open 15s after it")
	}
	// Recheck (1s) + decision TTL (1s), and margin.
	if closedAfter > 5*time.Second {
		t.Errorf("open connection closed %v after the deny, want within a few seconds", closedAfter)
	}
	t.Logf("deny (the CLI took %v) → new connections refused after %v; open connection closed after %v",
		cliTook.Round(time.Millisecond), refusedAfter.Round(time.Millisecond), closedAfter.Round(time.Millisecond))
	// Refusals say who and why.
	if l := lab.inboundLines("inbound: refused", "svc/web-client", "reason=intentions"); len(l) == 0 {
		t.Error("no refusal of web-client by intentions in inbound's log")
	}
	if l := lab.inboundLines("closing a connection that intentions now deny", "svc/web-client"); len(l) != 1 {
		t.Errorf("%d lines about closing the open connection, want 1", len(l))
	}

	lab.consulCLI(t, "intention", "delete", "web-client", "web")
	if err := meshlab.Poll(ctx, 10*time.Second, "callers let in again after the deny is removed", func() error {
		_, err := lab.get(ctx)
		return err
	}); err != nil {
		t.Error(err)
	}
}

// keepAliveGet sends one HTTP/1.1 request on c and reads its answer,
// leaving the connection open.
func keepAliveGet(c net.Conn, br *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "web1\n" {
		return fmt.Errorf("answer %q, %v", b, err)
	}
	return nil
}

// What is not a mesh caller never reaches the app: a plain TCP connection,
// garbage bytes, a TLS client without a certificate, one with a
// certificate of another CA that names a real service. Each is refused and
// logged with the reason, and inbound keeps serving.
func TestMTLSInboundRefusesNonMeshCallers(t *testing.T) {
	lab := startMTLSLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inbound := fmt.Sprintf("%s:21000", lab.web.IP)
	// The foreign CA writes the very URI a web-client leaf of this mesh has.
	snap := lab.state(t)
	foreign := certstest.NewCA(t, "foreign", snap.TrustDomain)
	forged := certstest.TLSCert(t, foreign.Sign(t, certstest.Leaf{Service: "web-client"}))

	for _, tc := range []struct {
		name string
		talk func(c net.Conn) error // returns nil if the app answered
		want []string               // in the refusal's log line
	}{
		{"plain TCP, closed at once", func(c net.Conn) error { return fmt.Errorf("closed") },
			[]string{"peer=none", "reason=closed-before-handshake"}},
		{"garbage bytes (plain HTTP)", func(c net.Conn) error {
			return keepAliveGet(c, bufio.NewReader(c))
		}, []string{"peer=none", "does not look like a TLS handshake"}},
		{"TLS without a client certificate", func(c net.Conn) error {
			return tlsGet(c, &tls.Config{InsecureSkipVerify: true})
		}, []string{"peer=none", "didn't provide a certificate"}},
		{"a certificate of another CA", func(c net.Conn) error {
			return tlsGet(c, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{forged}})
		}, []string{foreign.URI("web-client", "dc1"), "unknown authority"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(lab.inboundLines("inbound: refused"))
			c, err := lab.client.DialContext(ctx, "tcp", inbound)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.talk(c)
			c.Close()
			if err == nil {
				t.Fatal("the app answered")
			}
			var line string
			meshlab.Poll(ctx, 5*time.Second, "the refusal in the log", func() error {
				if l := lab.inboundLines("inbound: refused"); len(l) > before {
					line = l[len(l)-1]
					return nil
				}
				return fmt.Errorf("not logged")
			})
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("refusal %q lacks %q", line, w)
				}
			}
		})
	}
	select {
	case <-lab.inbound.Done():
		t.Fatal("meshlet exited")
	default:
	}
	if code, body, err := lab.sidecar.AdminGet(ctx, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("/readyz after the bad callers: %d %q %v", code, body, err)
	}
	// The refusals are counted by reason, and the leaf's remaining life
	// (Consul's dev leaves live 72 h) is a gauge.
	_, m, err := lab.sidecar.AdminGet(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		series string
		min    float64
	}{
		{`meshlet_mtls_handshake_failures_total{reason="tls"}`, 3},
		{`meshlet_mtls_handshake_failures_total{reason="closed-before-handshake"}`, 1},
		{`meshlet_mtls_leaf_expiry_seconds`, 3600},
	} {
		if v, ok := metricValue(m, want.series); !ok || v < want.min {
			t.Errorf("%s = %v (found %v), want at least %v", want.series, v, ok, want.min)
		}
	}
	if _, err := lab.get(ctx); err != nil {
		t.Errorf("a mesh caller after the bad ones: %v", err)
	}
}

// metricValue finds one series' value in a Prometheus text exposition.
func metricValue(exposition, series string) (float64, bool) {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// tlsGet makes an HTTP request over TLS on c.
func tlsGet(c net.Conn, cfg *tls.Config) error {
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return err
	}
	return keepAliveGet(tc, bufio.NewReader(tc))
}

// state reads the certs snapshot from /v1/state of web1's meshlet.
func (lab *mtlsLab) state(t *testing.T) certs.Snapshot {
	t.Helper()
	resp, err := lab.web.HTTPClient(3 * time.Second).Get("http://127.0.0.1:15000/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		MTLS struct {
			Mode  string
			Certs *certs.Snapshot
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.MTLS.Certs == nil {
		t.Fatalf("/v1/state has no certs (mtls mode %q)", st.MTLS.Mode)
	}
	return *st.MTLS.Certs
}

// A CA root rotation on the real Consul (`consul connect ca set-config`
// with a new key type) under constant load through Consul's proxy into
// inbound: not one request fails, and inbound ends up serving a leaf of
// the new root while trusting both.
func TestMTLSInboundCARotationUnderLoad(t *testing.T) {
	lab := startMTLSLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	before := lab.state(t)

	type result struct {
		ok     int
		failed []string
	}
	stop := make(chan struct{})
	done := make(chan result, 1)
	go func() {
		var r result
		for i := 0; i < 3000; i++ { // bounded: at most 3000 requests, 20ms apart
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			if _, err := lab.get(ctx); err != nil {
				r.failed = append(r.failed, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			} else {
				r.ok++
			}
			time.Sleep(20 * time.Millisecond)
		}
		done <- r
	}()
	time.Sleep(time.Second)
	cfg := filepath.Join(lab.w.Lab.Dir(), "ca-rsa.json")
	if err := os.WriteFile(cfg, []byte(`{"Provider":"consul","Config":{"PrivateKeyType":"rsa","PrivateKeyBits":2048}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	lab.consulCLI(t, "connect", "ca", "set-config", "-config-file", cfg)
	rotated := time.Now()
	var after certs.Snapshot
	// Consul's agents fetch new leaves at a random moment up to 30 s after
	// the roots change, so that a cluster's CA is not hit all at once.
	if err := meshlab.Poll(ctx, 45*time.Second, "inbound to serve a leaf of the new root", func() error {
		after = lab.state(t)
		if after.ActiveRoot == before.ActiveRoot || after.LeafSerial == before.LeafSerial {
			return fmt.Errorf("state %+v", after)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	took := time.Since(rotated)
	time.Sleep(3 * time.Second) // load on the new leaves, from both sides
	close(stop)
	r := <-done
	t.Logf("rotation: new leaf in inbound %v after set-config; %d requests ok, %d failed", took.Round(time.Millisecond), r.ok, len(r.failed))
	if len(r.failed) > 0 {
		t.Errorf("%d requests failed during the rotation; first: %s", len(r.failed), r.failed[0])
	}
	if after.Roots != 2 {
		t.Errorf("inbound trusts %d roots after the rotation, want both the old and the new", after.Roots)
	}
	if r.ok < 50 {
		t.Errorf("only %d requests made: the load did not cover the rotation", r.ok)
	}
}
