package registration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// fakeConsul is the agent API in memory: what is registered, the checks'
// states, and a switch that makes every call fail as an unreachable Consul
// would.
type fakeConsul struct {
	mu            sync.Mutex
	down          bool
	services      map[string]*api.AgentServiceRegistration
	checks        map[string]status
	registrations int
	deregistered  []string
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{services: map[string]*api.AgentServiceRegistration{}, checks: map[string]status{}}
}

var errDown = errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")

func (f *fakeConsul) ServiceRegisterOpts(reg *api.AgentServiceRegistration, opts api.ServiceRegisterOpts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	if !opts.ReplaceExistingChecks {
		return errors.New("registration must replace the checks of an earlier one")
	}
	f.services[reg.ID] = reg
	f.checks[reg.Check.CheckID] = status{reg.Check.Status, ""}
	f.registrations++
	return nil
}

func (f *fakeConsul) UpdateTTLOpts(checkID, output, st string, q *api.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	if _, ok := f.checks[checkID]; !ok {
		return fmt.Errorf("Unexpected response code: 404 (Unknown check ID %q)", checkID)
	}
	f.checks[checkID] = status{st, output}
	return nil
}

func (f *fakeConsul) ServiceDeregisterOpts(id string, q *api.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	delete(f.services, id)
	delete(f.checks, checkIDOf(id))
	f.deregistered = append(f.deregistered, id)
	return nil
}

func (f *fakeConsul) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

// forget drops everything, as a restarted dev agent does.
func (f *fakeConsul) forget() {
	f.mu.Lock()
	f.services = map[string]*api.AgentServiceRegistration{}
	f.checks = map[string]status{}
	f.mu.Unlock()
}

func (f *fakeConsul) check(id string) (status, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.checks[checkIDOf(id)]
	return st, ok
}

func (f *fakeConsul) service(id string) *api.AgentServiceRegistration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.services[id]
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// app is a local HTTP app whose /health can be turned failing.
type app struct {
	srv  *httptest.Server
	sick atomic.Bool
	port int
}

func startApp(t *testing.T) *app {
	a := &app{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(a.srv.Close)
	a.port = int(netip.MustParseAddrPort(a.srv.Listener.Addr().String()).Port())
	return a
}

func fastCheck() Check {
	return Check{Probe: ProbeHTTP, HTTPPath: "/health", Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond,
		SuccessThreshold: 1, FailureThreshold: 2, TTL: 5 * time.Second, DeregisterAfter: time.Minute}
}

func startRegistrar(t *testing.T, consul *fakeConsul, services []Service, tweak func(*Config)) (*Registrar, context.CancelFunc) {
	t.Helper()
	cfg := Config{
		Consul:   consul,
		Services: services,
		Address:  netip.MustParseAddr("127.0.0.1"),
		Backoff:  func(int) time.Duration { return 5 * time.Millisecond },
	}
	if tweak != nil {
		tweak(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return r, stop
}

func TestRegistrarRegistersAndFollowsTheProbe(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	svc := Service{ID: "box-web", Name: "web", Port: a.port, Tags: []string{"v1"}, Meta: map[string]string{"version": "1"}, Check: fastCheck()}
	r, _ := startRegistrar(t, consul, []Service{svc}, nil)

	waitFor(t, "registration", time.Second, func() bool { return consul.service("box-web") != nil })
	reg := consul.service("box-web")
	if reg.Name != "web" || reg.Address != "127.0.0.1" || reg.Port != a.port || reg.Tags[0] != "v1" || reg.Meta["version"] != "1" {
		t.Errorf("registration %+v", reg)
	}
	if c := reg.Check; c.TTL != "5s" || c.DeregisterCriticalServiceAfter != "1m0s" || c.HTTP != "" || c.CheckID != "meshlet:box-web" {
		t.Errorf("check %+v; want a TTL check fed by meshlet", c)
	}
	waitFor(t, "passing", time.Second, func() bool { st, _ := consul.check("box-web"); return st.health == api.HealthPassing })
	if st, _ := consul.check("box-web"); !strings.Contains(st.output, "200 OK") {
		t.Errorf("output %q", st.output)
	}

	a.sick.Store(true)
	start := time.Now()
	waitFor(t, "critical", time.Second, func() bool { st, _ := consul.check("box-web"); return st.health == api.HealthCritical })
	// Two failures 20 ms apart: well under a second, and not at the first.
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("critical after %v", d)
	}
	if st, _ := consul.check("box-web"); !strings.Contains(st.output, "503") {
		t.Errorf("output %q", st.output)
	}
	a.sick.Store(false)
	waitFor(t, "passing again", time.Second, func() bool { st, _ := consul.check("box-web"); return st.health == api.HealthPassing })
	if !r.Registered() {
		t.Error("Registered() = false")
	}
	if s := r.States(); len(s) != 1 || !s[0].Registered || s[0].Status != api.HealthPassing || s[0].Probe != "http" {
		t.Errorf("States() = %+v", s)
	}
}

func TestRegistrarWaitsForTheInitialDelay(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	c := fastCheck()
	c.InitialDelay = 300 * time.Millisecond
	start := time.Now()
	startRegistrar(t, consul, []Service{{ID: "w", Name: "web", Port: a.port, Check: c}}, nil)
	waitFor(t, "registration", time.Second, func() bool { _, ok := consul.check("w"); return ok })
	if st, _ := consul.check("w"); st.health != api.HealthCritical || !strings.Contains(st.output, "initial delay") {
		t.Errorf("before the delay: %+v", st)
	}
	waitFor(t, "passing", 2*time.Second, func() bool { st, _ := consul.check("w"); return st.health == api.HealthPassing })
	if d := time.Since(start); d < c.InitialDelay {
		t.Errorf("passing after %v, before the initial delay of %v", d, c.InitialDelay)
	}
}

func TestRegistrarRetriesUntilConsulAnswers(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	consul.setDown(true)
	r, _ := startRegistrar(t, consul, []Service{{ID: "w", Name: "web", Port: a.port, Check: fastCheck()}}, nil)
	time.Sleep(100 * time.Millisecond)
	if r.Registered() {
		t.Fatal("registered while Consul is down")
	}
	if s := r.States(); !strings.Contains(s[0].Error, "connection refused") {
		t.Errorf("state while Consul is down: %+v", s[0])
	}
	consul.setDown(false)
	waitFor(t, "passing once Consul answers", time.Second, func() bool { st, _ := consul.check("w"); return st.health == api.HealthPassing })
}

func TestRegistrarRegistersAgainWhenConsulForgets(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	startRegistrar(t, consul, []Service{{ID: "w", Name: "web", Port: a.port, Check: fastCheck()}}, nil)
	waitFor(t, "passing", time.Second, func() bool { st, _ := consul.check("w"); return st.health == api.HealthPassing })
	consul.forget()
	// The heartbeat is the probe interval (20 ms); the registration comes
	// back with the state the probe has, passing.
	waitFor(t, "registered again", time.Second, func() bool { st, _ := consul.check("w"); return st.health == api.HealthPassing })
	if consul.service("w") == nil {
		t.Error("service missing after re-registration")
	}
}

func TestRegistrarStopsCleanly(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	r, stop := startRegistrar(t, consul, []Service{{ID: "w", Name: "web", Port: a.port, Check: fastCheck()}}, nil)
	waitFor(t, "passing", time.Second, func() bool { st, _ := consul.check("w"); return st.health == api.HealthPassing })

	if err := r.MarkCritical(context.Background(), "meshlet is stopping"); err != nil {
		t.Fatal(err)
	}
	if st, _ := consul.check("w"); st.health != api.HealthCritical || st.output != "meshlet is stopping" {
		t.Errorf("after MarkCritical: %+v", st)
	}
	// The probe keeps passing; the check must stay critical, also when
	// Consul forgets it meanwhile.
	time.Sleep(100 * time.Millisecond)
	consul.forget()
	time.Sleep(100 * time.Millisecond)
	if st, ok := consul.check("w"); !ok || st.health != api.HealthCritical {
		t.Errorf("while draining: %+v (registered: %v)", st, ok)
	}
	stop()
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if consul.service("w") != nil {
		t.Error("still registered after Deregister")
	}
	if s := r.States(); s[0].Registered {
		t.Errorf("state after Deregister: %+v", s[0])
	}
}

func TestDeregisterWithoutRegistrationCallsNothing(t *testing.T) {
	consul := newFakeConsul()
	consul.setDown(true)
	r, stop := startRegistrar(t, consul, []Service{{ID: "w", Name: "web", Port: 1, Check: fastCheck()}}, nil)
	stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.MarkCritical(ctx, "stopping"); err != nil {
		t.Errorf("MarkCritical: %v", err)
	}
	if err := r.Deregister(ctx); err != nil || len(consul.deregistered) > 0 {
		t.Errorf("Deregister: %v, calls %v", err, consul.deregistered)
	}
}

func TestRegistrarDiscoversTheAppPort(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	meshlet := []string{"127.0.0.1:15000", "127.0.0.1:15001", "0.0.0.0:15053"}
	app := fmt.Sprintf("0.0.0.0:%d", a.port)
	// What the namespace shows over time: nothing of the app, then two
	// ports, then only its own.
	steps := [][]string{meshlet, meshlet, append(meshlet, app, "[::]:9999"), append(meshlet, app, "127.0.0.1:6060")}
	var calls atomic.Int32
	listening := func() ([]netip.AddrPort, error) {
		i := min(int(calls.Add(1))-1, len(steps)-1)
		var out []netip.AddrPort
		for _, s := range steps[i] {
			out = append(out, netip.MustParseAddrPort(s))
		}
		return out, nil
	}
	svcs, err := Parse([]string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=20ms", "SERVICE_CHECK_TIMEOUT=200ms"}, "box")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := startRegistrar(t, consul, svcs, func(c *Config) {
		c.Listening = listening
		c.ExcludePorts = []uint16{15000, 15001, 15053}
		c.DiscoverEvery = 10 * time.Millisecond
	})
	id := DefaultID("box", "web", a.port)
	waitFor(t, "registration on the discovered port", 2*time.Second, func() bool { return consul.service(id) != nil })
	if got := consul.service(id).Port; got != a.port {
		t.Errorf("port %d, want %d", got, a.port)
	}
	if calls.Load() < 5 {
		t.Errorf("registered after %d looks; want the single port seen twice after the two-port step", calls.Load())
	}
	waitFor(t, "passing", time.Second, func() bool { st, _ := consul.check(id); return st.health == api.HealthPassing })
	if s := r.States(); s[0].Port != a.port || s[0].ID != id {
		t.Errorf("state %+v", s[0])
	}
}

func TestRegistrarReportsSeveralPorts(t *testing.T) {
	consul := newFakeConsul()
	svcs, _ := Parse([]string{"SERVICE_NAME=web"}, "box")
	r, _ := startRegistrar(t, consul, svcs, func(c *Config) {
		c.Listening = func() ([]netip.AddrPort, error) {
			return []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80"), netip.MustParseAddrPort("0.0.0.0:81")}, nil
		}
		c.DiscoverEvery = 10 * time.Millisecond
	})
	waitFor(t, "an error asking for SERVICE_PORT", time.Second, func() bool {
		return strings.Contains(r.States()[0].Error, "set SERVICE_PORT")
	})
	consul.mu.Lock()
	n := consul.registrations
	consul.mu.Unlock()
	if n > 0 {
		t.Error("registered although the port is ambiguous")
	}
}

// hangingConsul is Consul's HTTP API on a real socket that, while hung,
// takes requests and never answers (a stopped Consul process); it
// records when each request came and when the client gave up on it.
type hangingConsul struct {
	srv  *httptest.Server
	hung atomic.Bool
	mu   sync.Mutex
	log  []hungCall
}

type hungCall struct {
	path       string
	start, end time.Time
}

func newHangingConsul(t *testing.T) *hangingConsul {
	h := &hangingConsul{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := hungCall{path: r.URL.Path, start: time.Now()}
		io.Copy(io.Discard, r.Body) // else the server never notices that the client gave up
		if h.hung.Load() {
			<-r.Context().Done()
		}
		c.end = time.Now()
		h.mu.Lock()
		h.log = append(h.log, c)
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hangingConsul) calls() []hungCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hungCall(nil), h.log...)
}

// Every call to a Consul that hangs ends at its own deadline, and the
// registration is retried: a check update that timed out is followed at
// once by a registration with a deadline of its own, not the spent one.
func TestRegistrarRetriesAConsulThatHangs(t *testing.T) {
	a := startApp(t)
	h := newHangingConsul(t)
	client, err := api.NewClient(&api.Config{Address: h.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	check := fastCheck()
	check.Interval = 50 * time.Millisecond
	svc := Service{ID: "box-web", Name: "web", Port: a.port, Check: check}
	const callTimeout = 200 * time.Millisecond
	startRegistrar(t, nil, []Service{svc}, func(c *Config) {
		c.Consul = client.Agent()
		c.CallTimeout = callTimeout
		c.Backoff = func(int) time.Duration { return 500 * time.Millisecond }
	})
	waitFor(t, "registration", 2*time.Second, func() bool {
		for _, c := range h.calls() {
			if strings.HasPrefix(c.path, "/v1/agent/check/update/") {
				return true
			}
		}
		return false
	})
	h.hung.Store(true)
	hungAt := time.Now()
	waitFor(t, "two registrations tried during the hang", 5*time.Second, func() bool {
		n := 0
		for _, c := range h.calls() {
			if c.path == "/v1/agent/service/register" && c.start.After(hungAt) {
				n++
			}
		}
		return n >= 2
	})
	var during []hungCall
	for _, c := range h.calls() {
		if c.start.After(hungAt) {
			during = append(during, c)
		}
	}
	for _, c := range during {
		if d := c.end.Sub(c.start); d < callTimeout-20*time.Millisecond || d > callTimeout+time.Second {
			t.Errorf("%s during the hang ended after %v, want its deadline %v", c.path, d, callTimeout)
		}
	}
	if len(during) < 2 || !strings.HasPrefix(during[0].path, "/v1/agent/check/update/") || during[1].path != "/v1/agent/service/register" ||
		during[1].start.Sub(during[0].end) > 100*time.Millisecond {
		t.Errorf("calls during the hang: %+v; want the timed-out update followed at once by a registration", during)
	}
}

// The first service gets a Connect sidecar on the port Config.Sidecar
// returns, called with the discovered port before the first
// registration; the second service gets none; a failing Sidecar leaves
// the service registered without one.
func TestRegistrarRegistersTheConnectSidecar(t *testing.T) {
	a := startApp(t)
	consul := newFakeConsul()
	web := Service{Name: "web", Check: fastCheck(), hostname: "box"}
	other := Service{ID: "box-admin", Name: "admin", Port: a.port, Check: fastCheck()}
	var gotPort atomic.Int32
	r, _ := startRegistrar(t, consul, []Service{web, other}, func(c *Config) {
		c.Listening = func() ([]netip.AddrPort, error) {
			return []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("0.0.0.0"), uint16(a.port))}, nil
		}
		c.DiscoverEvery = 5 * time.Millisecond
		c.Sidecar = func(ctx context.Context, svc Service) (int, error) {
			gotPort.Store(int32(svc.Port))
			if consul.service(svc.ID) != nil {
				t.Error("the app was registered before its sidecar's listener started")
			}
			return 21000, nil
		}
	})
	id := DefaultID("box", "web", a.port)
	waitFor(t, "registration", 2*time.Second, func() bool { return consul.service(id) != nil })
	if int(gotPort.Load()) != a.port {
		t.Errorf("Sidecar called with port %d, want the discovered %d", gotPort.Load(), a.port)
	}
	reg := consul.service(id)
	if reg.Connect == nil || reg.Connect.SidecarService == nil {
		t.Fatalf("registration %+v has no sidecar", reg)
	}
	sc := reg.Connect.SidecarService
	p := sc.Proxy
	if sc.Kind != api.ServiceKindConnectProxy || sc.ID != "" || sc.Name != "web-sidecar-proxy" ||
		sc.Port != 21000 || sc.Address != "127.0.0.1" || p == nil || p.DestinationServiceName != "web" ||
		p.DestinationServiceID != id || p.LocalServiceAddress != "127.0.0.1" || p.LocalServicePort != a.port {
		t.Errorf("sidecar %+v proxy %+v", sc, p)
	}
	if len(sc.Checks) != 1 || sc.Checks[0].AliasService != id {
		t.Errorf("sidecar checks %+v, want one alias of %s", sc.Checks, id)
	}
	if s := r.States(); s[0].SidecarID != id+"-sidecar-proxy" || s[0].SidecarPort != 21000 || s[1].SidecarID != "" {
		t.Errorf("states %+v", s)
	}
	waitFor(t, "the second service", time.Second, func() bool { return consul.service("box-admin") != nil })
	if consul.service("box-admin").Connect != nil {
		t.Error("the second service got a sidecar too")
	}

	consul2 := newFakeConsul()
	startRegistrar(t, consul2, []Service{other}, func(c *Config) {
		c.Sidecar = func(context.Context, Service) (int, error) { return 0, errors.New("address in use") }
	})
	waitFor(t, "registration without a sidecar", time.Second, func() bool { return consul2.service("box-admin") != nil })
	if consul2.service("box-admin").Connect != nil {
		t.Error("a sidecar was registered although its listener failed")
	}
}
