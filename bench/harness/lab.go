package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// lab is the benchmark topology: the standard meshlab world (Consul, three
// instances of "web", the app host) with meshlet, nginx and HAProxy as
// sidecars of the app, unbound as the app's resolver, a bulk TCP server in
// the first instance, and the footprint services registered in Consul.
type lab struct {
	cfg  Config
	log  func(format string, args ...any)
	root string // repository root

	bins         meshlab.Binaries
	loadgen      string
	meshletBench string
	h1proto      string

	w        *meshlab.World
	dir      string // generated configuration
	unbound  *netlab.Host
	unboundP *netlab.Proc
	nginx    *netlab.Proc
	haproxy  *netlab.Proc
	gomin    *netlab.Proc // bench/cmd/h1proto
	bulk     *netlab.Proc // S3's bulk server
	meshlet  *netlab.Proc
	profiled bool   // meshlet is the meshletbench build with pprof
	running  string // the meshlet binary running (not profiled)
	fast     *fastLab
	fastBulk bool // s3fast's bulk server is registered

	loadCPU, serverCPU string // taskset lists; "" when not pinning

	webVIP netip.Addr // web.local's VIP, resolved once

	portMu   sync.Mutex
	nextPort int
}

func (l *lab) close() {
	if l.w != nil {
		l.w.Close()
	}
}

// webAddrs are the instances' HTTP addresses.
func (l *lab) webAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, in := range l.w.Instances {
		out = append(out, netip.AddrPortFrom(in.Host.IP, 8080))
	}
	return out
}

func (l *lab) bulkAddr() netip.AddrPort {
	return netip.AddrPortFrom(l.w.Instances[0].Host.IP, bulkPort)
}

// pinned prefixes argv with taskset for cpus, unless pinning is off.
func pinned(cpus string, argv ...string) []string {
	if cpus == "" {
		return argv
	}
	return append([]string{"taskset", "-c", cpus}, argv...)
}

// pin moves every thread of a running process to cpus.
func (l *lab) pin(pid int, cpus string) error {
	if cpus == "" {
		return nil
	}
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("pinning pid %d to cpu %s: %w: %s", pid, cpus, err, out)
	}
	return nil
}

// startLab builds everything and starts the topology.
func startLab(ctx context.Context, cfg Config, logf func(string, ...any)) (l *lab, err error) {
	l = &lab{cfg: cfg, log: logf}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if runtime.NumCPU() >= 2 && !cfg.NoPin {
		l.loadCPU, l.serverCPU = "0", "1"
	}
	netlab.Sweep()
	bindir := filepath.Join(cfg.OutDir, "bin")
	if err := os.MkdirAll(bindir, 0o755); err != nil {
		return l, err
	}
	logf("building meshlet, the test instance and the load client")
	if l.bins, err = meshlab.Build(ctx, bindir); err != nil {
		return l, err
	}
	if cfg.MeshletBin != "" {
		if _, err := os.Stat(cfg.MeshletBin); err != nil {
			return l, fmt.Errorf("-meshlet-bin: %w", err)
		}
		logf("measuring %s instead of the meshlet built from this tree", cfg.MeshletBin)
		if l.bins.Meshlet, err = keepBinary(cfg.MeshletBin, filepath.Join(bindir, "given")); err != nil {
			return l, fmt.Errorf("-meshlet-bin: %w", err)
		}
	}
	if cfg.MeshletBefore != "" {
		if _, err := os.Stat(cfg.MeshletBefore); err != nil {
			return l, fmt.Errorf("-meshlet-before: %w", err)
		}
		logf("measuring %s too, as meshlet-before", cfg.MeshletBefore)
		if l.cfg.MeshletBefore, err = keepBinary(cfg.MeshletBefore, filepath.Join(bindir, "before")); err != nil {
			return l, fmt.Errorf("-meshlet-before: %w", err)
		}
	}
	if l.root, err = meshlab.RepoRoot(ctx); err != nil {
		return l, err
	}
	l.loadgen = filepath.Join(bindir, "loadgen")
	l.meshletBench = filepath.Join(bindir, "meshletbench")
	l.h1proto = filepath.Join(bindir, "h1proto")
	for out, pkg := range map[string]string{l.loadgen: "./bench/cmd/loadgen", l.meshletBench: "./bench/cmd/meshletbench", l.h1proto: "./bench/cmd/h1proto"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = l.root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return l, fmt.Errorf("building %s: %w: %s", pkg, err, o)
		}
	}

	logf("starting the lab: consul, 3 instances, app host")
	if l.w, err = meshlab.Start(ctx, l.bins, meshlab.Options{Instances: 3, NoMeshlet: true}); err != nil {
		return l, err
	}
	l.dir = l.w.Lab.Dir()
	// The server side (Consul, instances, proxies) shares one core; the
	// load generators get the other.
	if err := l.pin(l.w.ConsulProc.Cmd.Process.Pid, l.serverCPU); err != nil {
		return l, err
	}
	for _, in := range l.w.Instances {
		if err := l.pin(in.Proc.Cmd.Process.Pid, l.serverCPU); err != nil {
			return l, err
		}
	}
	if err := l.startUnbound(ctx); err != nil {
		return l, err
	}
	// The app's resolver is unbound: names outside the mesh go there.
	if _, err := l.w.App.WriteResolvConf(l.unbound.IP); err != nil {
		return l, err
	}
	if err := l.startBulk(ctx); err != nil {
		return l, err
	}
	if err := l.registerFootprintServices(); err != nil {
		return l, err
	}
	if err := l.registerPolicyServices(); err != nil {
		return l, err
	}
	if err := l.startMeshlet(ctx, false); err != nil {
		return l, err
	}
	// The clients use web.local's VIP with "Host: web.local": a load
	// generator resolves once anyway, and S4 measures DNS on its own.
	if l.webVIP, err = l.resolve(ctx, "web.local"); err != nil {
		return l, fmt.Errorf("resolving web.local: %w", err)
	}
	if err := l.startProxies(ctx); err != nil {
		return l, err
	}
	return l, nil
}

func (l *lab) startUnbound(ctx context.Context) error {
	h, err := l.w.Lab.AddHost("unbound")
	if err != nil {
		return err
	}
	l.unbound = h
	conf, err := writeFile(l.dir, "unbound.conf", unboundConfig(l.dir, outsideNames(100)))
	if err != nil {
		return err
	}
	p, err := h.Start("unbound", nil, pinned(l.serverCPU, "unbound", "-d", "-p", "-c", conf)...)
	if err != nil {
		return err
	}
	l.unboundP = p
	return meshlab.Poll(ctx, 15*time.Second, "unbound to answer", func() error {
		select {
		case <-p.Done():
			return meshlab.StopPolling(fmt.Errorf("unbound exited: %s", meshlab.Tail(p.Output())))
		default:
		}
		_, err := l.query(ctx, h, netip.AddrPortFrom(h.IP, unboundDirect), outsideNames(1)[0])
		return err
	})
}

// query asks server for name's A record from inside host and returns the
// first address. The query leaves from a port below the ephemeral range
// (see safePort), so that it never shares a conntrack entry with one of
// meshlet's forwarded queries: the app's queries to port 53 would then
// skip the redirect (see BENCHMARKS.md, S4).
func (l *lab) query(ctx context.Context, host *netlab.Host, server netip.AddrPort, name string) (netip.Addr, error) {
	return l.queryFrom(ctx, host, l.safePort(), server, name)
}

// queryFrom is query from a given local port; 0 means an ephemeral one.
func (l *lab) queryFrom(ctx context.Context, host *netlab.Host, port int, server netip.AddrPort, name string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var c net.Conn
	err := host.Do(func() error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: port}}
		var err error
		c, err = d.DialContext(ctx, "udp", server.String())
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	co := &mdns.Conn{Conn: c}
	if err := co.WriteMsg(m); err != nil {
		return netip.Addr{}, err
	}
	r, err := co.ReadMsg()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A.To4())
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: %s, no A record", name, mdns.RcodeToString[r.Rcode])
}

// safePort hands out local ports for the harness's own DNS queries, from
// a range below Linux's default ephemeral ports (32768–60999).
func (l *lab) safePort() int {
	l.portMu.Lock()
	defer l.portMu.Unlock()
	l.nextPort++
	return 21000 + l.nextPort%2000
}

// resolve asks the app's resolver, as the app would (the redirect hands the
// query to meshlet).
func (l *lab) resolve(ctx context.Context, name string) (netip.Addr, error) {
	return l.query(ctx, l.w.App, netip.AddrPortFrom(l.unbound.IP, 53), name)
}

func (l *lab) startBulk(ctx context.Context) error {
	in := l.w.Instances[0]
	p, err := in.Host.Start("bulk", nil, pinned(l.serverCPU, l.loadgen, "bulk-serve", "-listen", fmt.Sprintf(":%d", bulkPort), "-for", "4h")...)
	if err != nil {
		return err
	}
	l.bulk = p
	if err := l.w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "bulk-1", Name: "bulk", Address: in.Host.IP.String(), Port: bulkPort,
	}); err != nil {
		return fmt.Errorf("registering bulk: %w", err)
	}
	return meshlab.Poll(ctx, 10*time.Second, "the bulk server", func() error {
		select {
		case <-p.Done():
			return meshlab.StopPolling(fmt.Errorf("bulk server exited: %s", meshlab.Tail(p.Output())))
		default:
		}
		c, err := l.w.App.DialContext(ctx, "tcp", l.bulkAddr().String())
		if err == nil {
			c.Close()
		}
		return err
	})
}

// footprintServices are S6's 10 services of 10 instances each. Their
// instances point at the real ones (distinct IDs, no checks: passing), so
// they are routable.
func footprintServices() []string {
	var s []string
	for i := range 10 {
		s = append(s, fmt.Sprintf("svc%02d", i))
	}
	return s
}

func (l *lab) registerFootprintServices() error {
	addrs := l.webAddrs()
	for _, svc := range footprintServices() {
		for i := range 10 {
			a := addrs[i%len(addrs)]
			if err := l.w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
				ID: fmt.Sprintf("%s-%d", svc, i), Name: svc, Address: a.Addr().String(), Port: int(a.Port()),
			}); err != nil {
				return fmt.Errorf("registering %s: %w", svc, err)
			}
		}
	}
	return nil
}

// registerPolicyServices registers S1's services with policy meta, whose
// instances are web's (IDs of their own, no checks: passing).
func (l *lab) registerPolicyServices() error {
	for _, ps := range policyServices {
		for i, a := range l.webAddrs() {
			if err := l.w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
				ID: fmt.Sprintf("%s-%d", ps.service, i+1), Name: ps.service, Address: a.Addr().String(), Port: int(a.Port()), Meta: ps.meta,
			}); err != nil {
				return fmt.Errorf("registering %s: %w", ps.service, err)
			}
		}
	}
	return nil
}

// startMeshlet starts meshlet on the app host with one P (GOMAXPROCS=1),
// pinned to the server core; profiled starts the pprof build instead.
func (l *lab) startMeshlet(ctx context.Context, profiled bool) error {
	if l.running == "" {
		l.running = l.bins.Meshlet
	}
	bin, env := l.running, append([]string{"GOMAXPROCS=1"}, l.cfg.MeshletEnv...)
	if profiled {
		bin = l.meshletBench
		env = append(env, "MESHLET_BENCH_PPROF="+pprofAddr)
	}
	argv := pinned(l.serverCPU, bin, "run",
		"--consul", l.w.ConsulAddr(),
		"--resolv-conf", l.w.AppResolv,
		"--log-level", "warn",
		"--drain-timeout", "2s")
	p, err := l.w.App.Start("meshlet", env, argv...)
	if err != nil {
		return err
	}
	l.meshlet, l.profiled = p, profiled
	l.w.Meshlet = p
	if err := l.w.WaitReady(ctx); err != nil {
		return err
	}
	if c := procComm(p.Cmd.Process.Pid); !strings.HasPrefix(c, "meshlet") {
		return fmt.Errorf("meshlet's pid runs %q: the exec chain did not keep the pid", c)
	}
	return nil
}

// stopMeshlet stops meshlet as an orchestrator would (SIGTERM).
func (l *lab) stopMeshlet() {
	if l.meshlet == nil {
		return
	}
	l.meshlet.Signal(syscall.SIGTERM)
	if exited, _ := l.meshlet.Wait(10 * time.Second); !exited {
		l.meshlet.Kill()
	}
	l.meshlet = nil
}

// restartMeshlet gives a fresh meshlet process (footprint, profiles).
func (l *lab) restartMeshlet(ctx context.Context, profiled bool) error {
	l.stopMeshlet()
	return l.startMeshlet(ctx, profiled)
}

func (l *lab) meshletPid() int { return l.meshlet.Cmd.Process.Pid }

// meshletBin is the binary the meshlet targets need when a before build
// takes turns with it ("" otherwise: whatever runs).
func (l *lab) meshletBin() string {
	if l.cfg.MeshletBefore == "" {
		return ""
	}
	return l.bins.Meshlet
}

// useMeshlet makes bin the running meshlet (a restart when it is not),
// and waits until it knows the services the scenarios ask for.
func (l *lab) useMeshlet(ctx context.Context, bin string) error {
	if l.running == bin && !l.profiled && l.meshlet != nil {
		return nil
	}
	l.log("switching meshlet to %s", bin)
	l.running = bin
	if err := l.restartMeshlet(ctx, false); err != nil {
		return err
	}
	want := map[string]int{"web": 3, "bulk": 1}
	if l.fastBulk {
		want[bulkFastService] = 1
	}
	for _, ps := range policyServices {
		want[ps.service] = 3
	}
	if l.fast != nil {
		want[fastService] = len(l.fast.instances)
	}
	for name, n := range want {
		if _, err := l.resolve(ctx, name+".local"); err != nil {
			return fmt.Errorf("resolving %s.local: %w", name, err)
		}
		if err := l.waitEndpoints(ctx, n, name); err != nil {
			return err
		}
	}
	return nil
}

func (l *lab) startProxies(ctx context.Context) error {
	conf, err := writeFile(l.dir, "nginx.conf", nginxConfig(l.dir, l.webAddrs()))
	if err != nil {
		return err
	}
	if l.nginx, err = l.w.App.Start("nginx", nil, pinned(l.serverCPU, "nginx", "-c", conf, "-p", l.dir, "-e", filepath.Join(l.dir, "nginx-error.log"))...); err != nil {
		return err
	}
	conf, err = writeFile(l.dir, "haproxy.cfg", haproxyConfig(l.webAddrs(), l.bulkAddr()))
	if err != nil {
		return err
	}
	if l.haproxy, err = l.w.App.Start("haproxy", nil, pinned(l.serverCPU, "haproxy", "-db", "-f", conf)...); err != nil {
		return err
	}
	var ups []string
	for _, a := range l.webAddrs() {
		ups = append(ups, a.String())
	}
	if l.gomin, err = l.w.App.Start("h1proto", []string{"GOMAXPROCS=1"}, pinned(l.serverCPU, l.h1proto,
		"-listen", fmt.Sprintf("127.0.0.1:%d", goMinimalPort), "-upstreams", strings.Join(ups, ","))...); err != nil {
		return err
	}
	for p, url := range map[*netlab.Proc]string{
		l.nginx:   fmt.Sprintf("http://127.0.0.1:%d/payload", nginxPort),
		l.haproxy: fmt.Sprintf("http://127.0.0.1:%d/payload", haproxyPort),
		l.gomin:   fmt.Sprintf("http://127.0.0.1:%d/payload", goMinimalPort),
	} {
		if err := l.waitHTTP(ctx, p, url); err != nil {
			return err
		}
	}
	return nil
}

// waitHTTP waits until the proxy p answers url with 200, or has exited.
func (l *lab) waitHTTP(ctx context.Context, p *netlab.Proc, url string) error {
	return meshlab.Poll(ctx, 15*time.Second, p.Name+" to answer", func() error {
		select {
		case <-p.Done():
			return meshlab.StopPolling(fmt.Errorf("%s exited: %s", p.Name, meshlab.Tail(p.Output())))
		default:
		}
		resp, err := l.w.App.HTTPClient(2 * time.Second).Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

// meshletState is meshlet's /v1/state.
type meshletState struct {
	Services []struct {
		Name      string   `json:"name"`
		Endpoints []string `json:"endpoints"`
	} `json:"services"`
}

// waitEndpoints waits until meshlet knows n healthy instances of each of
// services.
func (l *lab) waitEndpoints(ctx context.Context, n int, services ...string) error {
	return meshlab.Poll(ctx, 20*time.Second, fmt.Sprintf("meshlet to see %d instances of %v", n, services), func() error {
		code, body, err := l.w.AdminGet(ctx, "/v1/state")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("state: %d", code)
		}
		var st meshletState
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		got := map[string]int{}
		for _, s := range st.Services {
			got[s.Name] = len(s.Endpoints)
		}
		for _, s := range services {
			if got[s] != n {
				return fmt.Errorf("%s has %d", s, got[s])
			}
		}
		return nil
	})
}

// runIn runs argv in host's namespace with a deadline and returns stdout
// (stderr is added to the error).
func runIn(ctx context.Context, host *netlab.Host, limit time.Duration, argv ...string) (string, error) {
	out, _, err := runInCPU(ctx, host, limit, argv...)
	return out, err
}

// runInCPU is runIn that also returns the CPU time (user + system) the
// command used (`ip netns exec` and taskset exec it in the same process).
func runInCPU(ctx context.Context, host *netlab.Host, limit time.Duration, argv ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := host.Command(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), 0, fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), host.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// keepBinary copies an outside meshlet build into dir as "meshlet": the
// results keep the binary they measured, and the process is named meshlet
// whatever the file was called (the lab checks meshlet's pid by its name).
func keepBinary(src, dir string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "meshlet")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return "", fmt.Errorf("keeping a copy of %s: %w", src, err)
	}
	return dst, nil
}
