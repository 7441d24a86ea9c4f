package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// The outbound half of mTLS, with `meshlet run` on the app host as a
// client-only sidecar presenting the identity "web-client", toward
// instances of "web" each fronted by Consul's own built-in proxy
// (`consul connect proxy -sidecar-for`). Every app listens on its host's
// loopback only: the address it is registered at refuses connections, so
// an answer can only have come through its proxy, over mTLS.

// connectInstance is an app behind a Connect sidecar on a host of its own.
type connectInstance struct {
	name  string
	host  *netlab.Host
	app   *netlab.Proc
	proxy *netlab.Proc
}

// addConnectInstance starts an app answering as name on 127.0.0.1:8080 of
// a new host, registers it as an instance of service with a Connect
// sidecar on port 21000, and starts Consul's proxy for it, waiting until
// it listens. The sidecar's check is a TTL check that passes from the
// start and for the whole test: a test kills a proxy and needs meshlet,
// not Consul, to notice.
func addConnectInstance(t *testing.T, w *meshlab.World, service, name string, meta map[string]string) *connectInstance {
	t.Helper()
	h, err := w.Lab.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	ci := &connectInstance{name: name, host: h}
	if ci.app, err = h.Start("webinstance", nil, w.Bins.WebInstance, "-listen", "127.0.0.1:8080", "-name", name); err != nil {
		t.Fatal(err)
	}
	if err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: name, Name: service, Address: h.IP.String(), Port: 8080, Meta: meta,
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{
			Port:   21000,
			Proxy:  &api.AgentServiceConnectProxyConfig{LocalServiceAddress: "127.0.0.1", LocalServicePort: 8080},
			Checks: api.AgentServiceChecks{{Name: "sidecar", TTL: "10m", Status: api.HealthPassing}},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	ci.startProxy(t, w)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's consul connect proxy log:\n%s", name, lastLines(ci.proxy.Output(), 20))
		}
	})
	return ci
}

// startProxy starts Consul's proxy for ci and waits until it listens
// (it listens once it has its certificates).
func (ci *connectInstance) startProxy(t *testing.T, w *meshlab.World) {
	t.Helper()
	var err error
	if ci.proxy, err = ci.host.Start("consul-proxy", []string{"CONSUL_HTTP_ADDR=" + w.ConsulAddr()}, w.Bins.Consul,
		"connect", "proxy", "-sidecar-for", ci.name); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := meshlab.Poll(ctx, 20*time.Second, ci.name+"'s proxy to listen", func() error {
		select {
		case <-ci.proxy.Done():
			return meshlab.StopPolling(fmt.Errorf("consul connect proxy exited: %s", meshlab.Tail(ci.proxy.Output())))
		default:
		}
		c, err := ci.host.DialContext(ctx, "tcp", ci.host.IP.String()+":21000")
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Fatal(err)
	}
}

// appCount is how many requests for / the app behind ci has served.
func (ci *connectInstance) appCount(t *testing.T) int {
	t.Helper()
	resp, err := ci.host.HTTPClient(5 * time.Second).Get("http://127.0.0.1:8080/admin/count")
	if err != nil {
		t.Fatalf("asking %s for its count: %v", ci.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var n int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &n); err != nil {
		t.Fatalf("%s's count %q: %v", ci.name, b, err)
	}
	return n
}

// waitConnectPassing waits until Consul lists n passing Connect
// endpoints of service.
func waitConnectPassing(ctx context.Context, t *testing.T, w *meshlab.World, service string, n int) {
	t.Helper()
	if err := meshlab.Poll(ctx, 30*time.Second, fmt.Sprintf("%d passing connect endpoints of %s", n, service), func() error {
		entries, _, err := w.Consul.Health().Connect(service, "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != n {
			return fmt.Errorf("%d passing", len(entries))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// startClientMeshlet starts meshlet on the app host as a client-only
// sidecar with the identity web-client, in mode.
func startClientMeshlet(ctx context.Context, t *testing.T, w *meshlab.World, mode string) {
	t.Helper()
	var err error
	if w.Meshlet, err = w.StartMeshlet("--mtls", mode, "--mtls-identity", "web-client"); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// stateEndpoints returns the "ID addr" endpoints /v1/state lists for
// service.
func stateEndpoints(ctx context.Context, w *meshlab.World, service string) ([]string, error) {
	_, body, err := w.AdminGet(ctx, "/v1/state")
	if err != nil {
		return nil, err
	}
	var st struct {
		Services []struct {
			Name      string   `json:"name"`
			Endpoints []string `json:"endpoints"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return nil, fmt.Errorf("/v1/state: %w", err)
	}
	for _, s := range st.Services {
		if s.Name == service {
			return s.Endpoints, nil
		}
	}
	return nil, nil
}

// waitMTLSEndpoints waits until meshlet routes service to exactly the
// sidecars (port 21000) of the n instances.
func waitMTLSEndpoints(ctx context.Context, t *testing.T, w *meshlab.World, vip netip.Addr, host string, n int) {
	t.Helper()
	c := w.NewAppClient(vip, host, false)
	if err := meshlab.Poll(ctx, 20*time.Second, fmt.Sprintf("meshlet to route %s to %d sidecars", host, n), func() error {
		c.Get(ctx, "/", "") // starts the watch
		eps, err := stateEndpoints(ctx, w, strings.Split(host, ".")[0])
		if err != nil {
			return err
		}
		sidecars := 0
		for _, e := range eps {
			if strings.HasSuffix(e, ":21000") {
				sidecars++
			}
		}
		if sidecars != n || len(eps) != n {
			return fmt.Errorf("endpoints %v", eps)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// meshletLog returns the lines of meshlet's log that contain all of want.
func meshletLog(w *meshlab.World, want ...string) []string {
	var out []string
	for _, l := range strings.Split(w.Meshlet.Output(), "\n") {
		ok := l != ""
		for _, s := range want {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// Spread, stickiness and a retry over mTLS to Consul's proxies; the
// proof that the plaintext path was never used; an instance whose
// sidecar presents another service's identity refused with nothing
// forwarded; and a caller-side deny intention that refuses the app with
// a 403 within about a second, lifted as fast.
func TestMTLSOutboundToConsulProxies(t *testing.T) {
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1, NoMeshlet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var insts []*connectInstance
	for i := 1; i <= 3; i++ {
		insts = append(insts, addConnectInstance(t, w, "web", fmt.Sprintf("web-%d", i), stickyMeta))
	}
	waitConnectPassing(ctx, t, w, "web", 3)
	startClientMeshlet(ctx, t, w, "permissive")
	vip := resolveVIP(t, w, "web.local")
	waitMTLSEndpoints(ctx, t, w, vip, "web.local", 3)

	// Spread, and stickiness.
	plain := w.NewAppClient(vip, "web.local", false)
	spread := map[string]int{}
	for range 30 {
		h := plain.Get(ctx, "/", "")
		if !h.OK() {
			t.Fatalf("request over mTLS: %+v", h)
		}
		spread[h.Instance]++
	}
	for _, ci := range insts {
		if spread[ci.name] < 5 {
			t.Errorf("spread over mTLS %v: want every instance to get its share", spread)
		}
	}
	keeper := w.NewAppClient(vip, "web.local", true)
	pinned := keeper.Get(ctx, "/", "").Instance
	for i := range 20 {
		if h := keeper.Get(ctx, "/", ""); h.Instance != pinned {
			t.Fatalf("sticky request %d went to %s (%+v), want %s", i, h.Instance, h, pinned)
		}
	}

	// The plaintext path is closed: every answer came through a proxy.
	for _, ci := range insts {
		if out, err := w.App.Run(ctx, "curl", "-sS", "--max-time", "2", "--noproxy", "*",
			fmt.Sprintf("http://%s:8080/", ci.host.IP)); err == nil {
			t.Errorf("%s answered in plaintext at its registered address: %q", ci.name, out)
		}
	}

	// A retry: the pinned instance's proxy dies; Consul does not notice
	// (its check is a TTL), meshlet's dial is refused and the request
	// goes to another instance.
	var victim *connectInstance
	for _, ci := range insts {
		if ci.name == pinned {
			victim = ci
		}
	}
	victim.proxy.Kill()
	for i := range 10 {
		h := keeper.Get(ctx, "/", "")
		if !h.OK() || h.Instance == victim.name {
			t.Fatalf("request %d after %s's proxy died: %+v, want another instance's answer", i, victim.name, h)
		}
	}
	if len(meshletLog(w, "retrying on another instance", victim.host.IP.String()+":21000")) == 0 {
		t.Errorf("no retry away from %s's dead sidecar in meshlet's log", victim.name)
	}

	// A sidecar that presents another identity: db's proxy, listed as the
	// sidecar of a fourth web instance.
	impostor := addConnectInstance(t, w, "db", "db-1", nil)
	if err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "web-4", Name: "web", Address: impostor.host.IP.String(), Port: 8080, Meta: stickyMeta,
	}); err != nil {
		t.Fatal(err)
	}
	if err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "web-4-sidecar-proxy", Name: "web-sidecar-proxy",
		Address: impostor.host.IP.String(), Port: 21000,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", DestinationServiceID: "web-4"},
	}); err != nil {
		t.Fatal(err)
	}
	waitConnectPassing(ctx, t, w, "web", 4) // the victim's entry stays passing: its check is a TTL
	if err := meshlab.Poll(ctx, 10*time.Second, "meshlet to try the impostor", func() error {
		h := plain.Get(ctx, "/", "")
		if !h.OK() {
			return meshlab.StopPolling(fmt.Errorf("a request failed: %+v", h))
		}
		if len(meshletLog(w, "mTLS handshake with an instance failed", "reason=\"wrong server identity\"")) == 0 {
			return fmt.Errorf("no refused handshake yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := impostor.appCount(t); n != 0 {
		t.Errorf("the app behind the impostor sidecar served %d requests, want none", n)
	}
	if err := w.Consul.Agent().ServiceDeregister("web-4-sidecar-proxy"); err != nil {
		t.Fatal(err)
	}

	// Caller-side intentions: a deny refuses the app within about a
	// second with a 403 that names it; the app's keep-alive connection
	// stays usable, and a removal lets it through again.
	lab := &mtlsLab{w: w}
	keepAlive := w.App.HTTPClient(5 * time.Second)
	ask := func() meshlab.Hit {
		return (&meshlab.AppClient{HTTP: keepAlive, VIP: vip, Host: "web.local"}).Get(ctx, "/", "")
	}
	if h := ask(); !h.OK() {
		t.Fatalf("before the deny: %+v", h)
	}
	// Timed from the start of the CLI: an upper bound that includes it.
	denied := time.Now()
	lab.consulCLI(t, "intention", "create", "-deny", "web-client", "web")
	var h meshlab.Hit
	if err := meshlab.Poll(ctx, 5*time.Second, "the deny to refuse the app", func() error {
		if h = ask(); h.OK() {
			return fmt.Errorf("still served by %s", h.Instance)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(denied)
	if !slices.ContainsFunc(meshletLog(w, "intention denies the app's calls", "closed="), func(l string) bool { return !strings.Contains(l, "closed=0") }) {
		t.Errorf("meshlet did not close its pooled connections to the denied service:\n%s",
			strings.Join(meshletLog(w, "intention denies"), "\n"))
	}
	t.Logf("consul intention create -deny started → first refused request: %v", took.Round(time.Millisecond))
	if h.Status != http.StatusForbidden || h.Error != "denied-by-intention" {
		t.Errorf("answer after the deny %+v, want 403 denied-by-intention", h)
	}
	if took > 2*time.Second {
		t.Errorf("the deny took %v to refuse requests, want about a second", took)
	}
	allowed := time.Now()
	lab.consulCLI(t, "intention", "delete", "web-client", "web")
	if err := meshlab.Poll(ctx, 5*time.Second, "requests to be allowed again", func() error {
		if h := ask(); !h.OK() {
			return fmt.Errorf("%+v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("consul intention delete started → first served request: %v", time.Since(allowed).Round(time.Millisecond))
}

// Strict mode: a service with Connect sidecars is reached over mTLS, one
// with plaintext instances only gets a fast 503 that says why. The
// sidecar restarts: the connection meshlet kept alive to it is closed,
// and the app's next POST, which meshlet never sends twice, goes on a new
// one and reaches the app behind it once.
func TestMTLSOutboundStrict(t *testing.T) {
	w := startWorld(t, meshlab.Options{Service: "plain", Instances: 1, NoMeshlet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	web1 := addConnectInstance(t, w, "web", "web-1", nil)
	waitConnectPassing(ctx, t, w, "web", 1)
	startClientMeshlet(ctx, t, w, "strict")
	vip := resolveVIP(t, w, "web.local")
	waitMTLSEndpoints(ctx, t, w, vip, "web.local", 1)
	if h := w.NewAppClient(vip, "web.local", false).Get(ctx, "/", ""); !h.OK() || h.Instance != "web-1" {
		t.Errorf("strict, over mTLS: %+v", h)
	}

	served := web1.appCount(t)
	web1.proxy.Kill()
	web1.startProxy(t, w)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+vip.String()+"/echo", strings.NewReader("order-1"))
	req.Host = "web.local"
	if resp, err := w.App.HTTPClient(10 * time.Second).Do(req); err != nil {
		t.Errorf("POST after the sidecar restarted: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "order-1" {
			t.Errorf("POST after the sidecar restarted: %d %q %s, want the app's echo",
				resp.StatusCode, b, resp.Header.Get("X-Meshlet-Error"))
		}
	}
	if n := web1.appCount(t) - served; n != 1 {
		t.Errorf("the POST reached the app %d times, want once", n)
	}
	plainVIP := resolveVIP(t, w, "plain.local")
	c := w.NewAppClient(plainVIP, "plain.local", false)
	start := time.Now()
	h := c.Get(ctx, "/", "")
	if h.Status != http.StatusServiceUnavailable || h.Error != "no-mtls-instance" {
		t.Errorf("strict, to a plaintext-only service: %+v, want 503 no-mtls-instance", h)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the refusal took %v, want it fast", took)
	}
	out, _ := w.Curl(ctx, "-H", "Host: plain.local", "http://"+plainVIP.String()+"/")
	if !strings.Contains(out, `strict mTLS: none of the 1 registered instances of service "plain" has a passing Connect sidecar`) {
		t.Errorf("the refusal says %q, want the reason", out)
	}
}

// Meshlet to meshlet: instances behind meshlet's own inbound listener
// (`meshlet run` registering the app, --mtls=strict, so that only the
// inbound reaches the app), called by the client-only meshlet: spread
// over mTLS, and a caller-side deny answered with a 403.
func TestMTLSOutboundToMeshletInbound(t *testing.T) {
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1, NoMeshlet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	env := []string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=500ms"}
	var names []string
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("inst%d", i)
		s, err := w.AddSidecarHost(name, env, "--mtls", "strict")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s's meshlet log:\n%s", name, lastLines(s.Meshlet.Output(), 40))
			}
		})
		if err := s.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	waitConnectPassing(ctx, t, w, "web", 2)
	startClientMeshlet(ctx, t, w, "permissive")
	vip := resolveVIP(t, w, "web.local")
	waitMTLSEndpoints(ctx, t, w, vip, "web.local", 2)
	c := w.NewAppClient(vip, "web.local", false)
	spread := map[string]int{}
	for range 20 {
		h := c.Get(ctx, "/", "")
		if !h.OK() {
			t.Fatalf("request through meshlet's inbound: %+v", h)
		}
		spread[h.Instance]++
	}
	for _, name := range names {
		if spread[name] != 10 {
			t.Errorf("spread %v, want 10 requests on each instance", spread)
		}
	}
	lab := &mtlsLab{w: w}
	lab.consulCLI(t, "intention", "create", "-deny", "web-client", "web")
	if err := meshlab.Poll(ctx, 5*time.Second, "the deny to refuse the app", func() error {
		if h := c.Get(ctx, "/", ""); h.Status != http.StatusForbidden || h.Error != "denied-by-intention" {
			return fmt.Errorf("answer %+v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lab.consulCLI(t, "intention", "delete", "web-client", "web")
	if err := meshlab.Poll(ctx, 5*time.Second, "requests to be allowed again", func() error {
		if h := c.Get(ctx, "/", ""); !h.OK() {
			return fmt.Errorf("%+v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
