// Command consulscale measures what N meshlet sidecars cost a three-server
// Consul cluster, and how stale their view gets: N upstream.Mesh (the real
// watch code, each with its own api.Client) in this process, spread over
// client agents in lab namespaces, each watching 5 of 10 services, while
// instances fail, recover, leave and register again at a fixed rate. It
// compares the ways of asking Consul (upstream.QueryMode, and the agents'
// streaming backend). Run as root; see BENCHMARKS.md, "Consul at scale".
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/clusterlab"
	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
	"github.com/meshlet/meshlet/upstream"
)

const (
	services    = 10 // watched ones: svc-0 … svc-9; each sidecar watches 5
	perSidecar  = 5
	instancesOf = 3 // per service, at start
)

// mode is one way of asking Consul.
type mode struct {
	name      string
	query     upstream.QueryMode
	streaming bool // the client agents' use_streaming_backend
	catalog   upstream.CatalogMode
}

var modes = []mode{
	// meshlet's default on an agent that streams (Consul's default): the
	// catalog asked at start only (no sidecar looks up a name it does
	// not know here), health from the agent's streaming subscription
	{"default", upstream.QueryDefault, true, upstream.CatalogOnDemand},
	// the same, with the catalog a blocking query per sidecar (the
	// default before --consul-catalog)
	{"watch", upstream.QueryDefault, true, upstream.CatalogWatch},
	// health from the agent's cache (a background blocking RPC per agent
	// and service), the catalog a blocking query per sidecar (never
	// ?cached: upstream/querymode.go)
	{"cached", upstream.QueryCached, false, upstream.CatalogWatch},
	{"stale", upstream.QueryStale, false, upstream.CatalogWatch},
	{"plain", upstream.QueryPlain, false, upstream.CatalogWatch}, // every query a blocking RPC to the servers
}

func main() {
	ns := flag.String("n", "100,300,1000", "numbers of sidecars")
	only := flag.String("modes", "", "modes to run (default all): default,watch,cached,stale,plain")
	perAgent := flag.Int("per-agent", 50, "sidecars per client agent (as on one host); agents are added as N grows")
	changes := flag.Int("changes", 12, "changes per phase")
	every := flag.Duration("every", 500*time.Millisecond, "time between changes")
	converge := flag.Duration("converge", 300*time.Second, "how long all N sidecars may take to see every instance at start")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("consulscale: run as root (it makes network namespaces)")
	}
	netlab.Sweep()
	consul, err := consulBin()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("# consulscale: %d sidecars per client agent, %d services (each sidecar watches %d), %d instances each; %d changes per phase, one every %v\n",
		*perAgent, services, perSidecar, instancesOf, *changes, *every)
	fmt.Printf("# per change: requests to the servers (consul_rpc_request + consul_rpc_query, less the sidecars' liveness checks), bytes through the servers' interfaces, servers' CPU; idle cost of the same time subtracted\n")
	fmt.Printf("# idle: requests to the servers per second with no change, and the sidecars' liveness checks (/v1/status/leader, each a request to a server) among them\n")
	fmt.Println("| N | mode | watched: rpc/change | bytes/change | CPU ms/change | staleness p50 / p99 / max | unrelated: rpc/change | bytes/change | CPU ms/change | idle: rpc/s (pings/s) |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, md := range modes {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), md.name) {
			continue
		}
		var counts []int
		for _, s := range strings.Split(*ns, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				log.Fatalf("-n: %q is not a count", s)
			}
			counts = append(counts, n)
		}
		if err := runMode(md, consul, counts, *perAgent, *changes, *every, *converge); err != nil {
			log.Fatalf("mode %s: %v", md.name, err)
		}
	}
}

func consulBin() (string, error) {
	if b := os.Getenv("MESHLET_CONSUL_BIN"); b != "" {
		return b, nil
	}
	root, err := meshlab.RepoRoot(context.Background())
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "consul.sh")).Output()
	return strings.TrimSpace(string(out)), err
}

// world is a cluster with its agent hosts for one mode.
type world struct {
	c     *clusterlab.Cluster
	sides []*clusterlab.Agent // where the sidecars' clients connect
	inst  *clusterlab.Agent   // where the instances are registered
	// pings counts the sidecars' liveness checks (/v1/status/leader), each
	// a request to a server, so that they can be told from the watches'.
	pings atomic.Int64
}

func runMode(md mode, consul string, counts []int, perAgent, changes int, every, converge time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	opts := clusterlab.Options{
		ServerHCL: []string{`telemetry { prometheus_retention_time = "1h" }`, `limits { http_max_conns_per_client = 15000 }`},
		ClientHCL: []string{`limits { http_max_conns_per_client = 15000 }`, fmt.Sprintf("use_streaming_backend = %v", md.streaming)},
	}
	c, err := clusterlab.Start(ctx, meshlab.Binaries{Consul: consul}, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	w := &world{c: c}
	if w.inst, err = c.AddAgentHost(ctx, "inst"); err != nil {
		return err
	}
	for s := range services + 1 { // the last one, "other", is watched by nobody
		for i := range instancesOf {
			if err := w.register(serviceName(s), i); err != nil {
				return err
			}
		}
	}
	for _, n := range counts {
		for len(w.sides)*perAgent < n {
			a, err := c.AddAgentHost(ctx, fmt.Sprintf("side%d", len(w.sides)+1))
			if err != nil {
				return err
			}
			w.sides = append(w.sides, a)
		}
		if err := w.measure(ctx, md, n, changes, every, converge); err != nil {
			return err
		}
	}
	return nil
}

func serviceName(s int) string {
	if s == services {
		return "other"
	}
	return fmt.Sprintf("svc-%d", s)
}

func (w *world) register(service string, i int) error {
	id := fmt.Sprintf("%s-%d", service, i)
	return w.inst.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: fmt.Sprintf("10.99.%d.%d", len(service), i+1), Port: 8080,
		Check: &api.AgentServiceCheck{CheckID: "ttl-" + id, TTL: "24h", Status: api.HealthPassing},
	})
}

// restore undoes the changes of a previous measure: every service's
// first instance registered and passing again. Without it, the next N's
// sidecars wait for instances a previous N's changes left critical or
// gone, and never converge.
func (w *world) restore() error {
	for s := range services + 1 {
		name := serviceName(s)
		if err := w.register(name, 0); err != nil {
			return err
		}
		if err := w.inst.Consul.Agent().UpdateTTL("ttl-"+name+"-0", "ok", api.HealthPassing); err != nil {
			return err
		}
	}
	return nil
}

// sidecar is one simulated meshlet's watching.
type sidecar struct {
	mesh    *upstream.Mesh
	watches []string
}

// measure runs n sidecars, waits until all see every instance, then
// measures an idle period, changes to watched services and changes to an
// unwatched one.
func (w *world) measure(ctx context.Context, md mode, n, changes int, every, converge time.Duration) error {
	if err := w.restore(); err != nil {
		return fmt.Errorf("restoring the instances: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var transports []*http.Transport
	defer func() {
		stop()
		wg.Wait()
		// Idle keep-alive connections would count against the agents'
		// connection limits in the next, larger run.
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()
	sides := make([]*sidecar, n)
	watchers := map[string][]*sidecar{}
	for i := range n {
		a := w.sides[i%len(w.sides)]
		cfg := api.DefaultNonPooledConfig()
		cfg.Address, cfg.Scheme = "127.0.0.1:8500", "http"
		cfg.TLSConfig = api.TLSConfig{}
		cfg.Transport.DialContext = a.Host.DialContext
		cfg.Transport.Proxy = nil
		transports = append(transports, cfg.Transport)
		cfg.HttpClient = &http.Client{Transport: countPings{cfg.Transport, &w.pings}}
		client, err := api.NewClient(cfg)
		if err != nil {
			return err
		}
		m, err := upstream.New(upstream.Config{Consul: client, QueryMode: md.query, Catalog: md.catalog, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		sc := &sidecar{mesh: m}
		for k := range perSidecar {
			name := serviceName((i + k) % services)
			sc.watches = append(sc.watches, name)
			watchers[name] = append(watchers[name], sc)
		}
		sides[i] = sc
		wg.Add(1)
		go func() { defer wg.Done(); m.Run(runCtx) }()
		for _, name := range sc.watches {
			m.Watch(name)
		}
	}
	if err := waitAll(ctx, sides, converge, func(sc *sidecar) bool {
		for _, name := range sc.watches {
			if len(sc.mesh.Endpoints(name)) != instancesOf {
				return false
			}
		}
		ok, _ := sc.mesh.CatalogReady()
		return ok
	}); err != nil {
		// A mode that cannot even start N sidecars is a result, not a
		// reason to stop the others.
		ready := 0
		for _, sc := range sides {
			if ok, _ := sc.mesh.CatalogReady(); ok && len(sc.mesh.Endpoints(sc.watches[0])) == instancesOf {
				ready++
			}
		}
		fmt.Printf("| %d | %s | only %d of %d sidecars saw every instance within %v | | | | | | | |\n", n, md.name, ready, n, converge)
		// What the others lack, for the operator: how many of their
		// watches miss instances, and the catalog's reason.
		lacking := map[string]int{}
		for _, sc := range sides {
			if ok, why := sc.mesh.CatalogReady(); !ok {
				lacking["catalog: "+why]++
			}
			for _, name := range sc.watches {
				if got := len(sc.mesh.Endpoints(name)); got != instancesOf {
					lacking[fmt.Sprintf("%d instances of a watched service", got)]++
				}
			}
			for _, line := range sc.mesh.Status() {
				lacking["status: "+line]++
			}
		}
		for what, count := range lacking {
			log.Printf("consulscale: N=%d %s: %d× %s", n, md.name, count, what)
		}
		return nil
	}
	time.Sleep(3 * time.Second) // let the start's burst pass

	period := time.Duration(changes) * every
	idle, err := w.sample(ctx, func() error { time.Sleep(period); return nil })
	if err != nil {
		return err
	}
	var stale []time.Duration
	var mu sync.Mutex
	watched, err := w.sample(ctx, func() error {
		var cw sync.WaitGroup
		defer cw.Wait()
		for k := range changes {
			name := serviceName(k % services)
			want, err := w.change(name, k/services)
			if err != nil {
				return err
			}
			at := time.Now()
			cw.Add(1)
			go func() {
				defer cw.Done()
				d := staleness(ctx, watchers[name], name, want, at)
				mu.Lock()
				stale = append(stale, d...)
				mu.Unlock()
			}()
			time.Sleep(every)
		}
		return nil
	})
	if err != nil {
		return err
	}
	unrelated, err := w.sample(ctx, func() error {
		for k := range changes {
			if _, err := w.change("other", k); err != nil {
				return err
			}
			time.Sleep(every)
		}
		return nil
	})
	if err != nil {
		return err
	}
	a, b := watched.minus(idle), unrelated.minus(idle)
	slices.Sort(stale)
	fmt.Printf("| %d | %s | %.1f | %.0f | %.1f | %s / %s / %s | %.1f | %.0f | %.1f | %.0f (%.0f) |\n", n, md.name,
		a.rpc/float64(changes), a.bytes/float64(changes), a.cpu.Seconds()*1000/float64(changes),
		pct(stale, 50), pct(stale, 99), pct(stale, 100),
		b.rpc/float64(changes), b.bytes/float64(changes), b.cpu.Seconds()*1000/float64(changes),
		(idle.rpc+idle.pings)/idle.dur.Seconds(), idle.pings/idle.dur.Seconds())
	return nil
}

// change makes one change to service name's instances, cycling through
// fail, recover, deregister and register again, and returns how many
// instances then pass.
func (w *world) change(name string, k int) (int, error) {
	id := fmt.Sprintf("%s-0", name)
	ag := w.inst.Consul.Agent()
	switch k % 4 {
	case 0:
		return instancesOf - 1, ag.UpdateTTL("ttl-"+id, "failing on purpose", api.HealthCritical)
	case 1:
		return instancesOf, ag.UpdateTTL("ttl-"+id, "ok", api.HealthPassing)
	case 2:
		return instancesOf - 1, ag.ServiceDeregister(id)
	default:
		return instancesOf, w.register(name, 0)
	}
}

// staleness waits until every watcher sees want passing instances of
// name, and returns how long each took after at (10 s at most).
func staleness(ctx context.Context, ws []*sidecar, name string, want int, at time.Time) []time.Duration {
	out := make([]time.Duration, len(ws))
	seen := make([]bool, len(ws))
	left := len(ws)
	for left > 0 && time.Since(at) < 10*time.Second && ctx.Err() == nil {
		for i, sc := range ws {
			if !seen[i] && len(sc.mesh.Endpoints(name)) == want {
				seen[i], out[i] = true, time.Since(at)
				left--
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range out {
		if !seen[i] {
			out[i] = 10 * time.Second
		}
	}
	return out
}

// countPings counts the liveness checks a sidecar's client sends.
type countPings struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countPings) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v1/status/leader" {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

func waitAll(ctx context.Context, sides []*sidecar, limit time.Duration, ok func(*sidecar) bool) error {
	return meshlab.Poll(ctx, limit, "every sidecar", func() error {
		for i, sc := range sides {
			if !ok(sc) {
				return fmt.Errorf("sidecar %d not yet", i)
			}
		}
		return nil
	})
}

func pct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "-"
	}
	i := min(len(d)-1, len(d)*p/100)
	return d[i].Round(time.Millisecond).String()
}

// cost is what the servers spent in one period. rpc leaves out the
// sidecars' liveness checks, counted in pings: fewer of them are sent
// while watches answer, which would make a period of changes look
// cheaper than an idle one.
type cost struct {
	rpc, pings, bytes float64
	cpu               time.Duration
	dur               time.Duration // of the period
}

// minus subtracts the idle cost b, scaled to a's period: the changes'
// period lasts longer, until every watcher saw the last change.
func (a cost) minus(b cost) cost {
	f := 1.0
	if b.dur > 0 {
		f = a.dur.Seconds() / b.dur.Seconds()
	}
	return cost{
		rpc: max(a.rpc-f*b.rpc, 0), pings: a.pings - f*b.pings, bytes: max(a.bytes-f*b.bytes, 0),
		cpu: max(a.cpu-time.Duration(f*float64(b.cpu)), 0), dur: a.dur,
	}
}

// sample runs f and returns the servers' cost meanwhile.
func (w *world) sample(ctx context.Context, f func() error) (cost, error) {
	before, err := w.counters(ctx)
	if err != nil {
		return cost{}, err
	}
	start := time.Now()
	if err := f(); err != nil {
		return cost{}, err
	}
	dur := time.Since(start)
	after, err := w.counters(ctx)
	if err != nil {
		return cost{}, err
	}
	pings := after.pings - before.pings
	return cost{rpc: after.rpc - before.rpc - pings, pings: pings, bytes: after.bytes - before.bytes, cpu: after.cpu - before.cpu, dur: dur}, nil
}

// counters reads the servers' cumulative RPC counts, interface bytes and
// CPU time.
func (w *world) counters(ctx context.Context) (cost, error) {
	total := cost{pings: float64(w.pings.Load())}
	for _, s := range w.c.Servers {
		rpc, err := promCounters(ctx, s)
		if err != nil {
			return total, err
		}
		total.rpc += rpc
		out, err := exec.CommandContext(ctx, "ip", "-n", s.Host.NS, "-s", "-j", "link", "show", "eth0").Output()
		if err != nil {
			return total, fmt.Errorf("interface counters of %s: %w", s.Name, err)
		}
		var links []struct {
			Stats struct {
				RX struct{ Bytes float64 } `json:"rx"`
				TX struct{ Bytes float64 } `json:"tx"`
			} `json:"stats64"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) == 0 {
			return total, fmt.Errorf("interface counters of %s: %v", s.Name, err)
		}
		total.bytes += links[0].Stats.RX.Bytes + links[0].Stats.TX.Bytes
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.Proc.Cmd.Process.Pid))
		if err != nil {
			return total, err
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total.cpu += time.Duration((ut + st) * float64(time.Second) / 100) // USER_HZ
	}
	return total, nil
}

// promCounters sums the server's cumulative counts of RPC requests and
// blocking queries, from its Prometheus metrics.
func promCounters(ctx context.Context, s *clusterlab.Server) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Host.IP.String()+":8500/v1/agent/metrics?format=prometheus", nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.Host.HTTPClient(10 * time.Second).Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", s.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", s.Name, err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (f[0] == "consul_rpc_request" || f[0] == "consul_rpc_query") {
			v, _ := strconv.ParseFloat(f[1], 64)
			sum += v
		}
	}
	return sum, nil
}
