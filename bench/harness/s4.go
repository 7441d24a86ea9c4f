package harness

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// S4's targets.
const (
	s4Mesh      = "meshlet: mesh names (*.local)"
	s4Forwarded = "meshlet → unbound: forwarded names"
	s4Direct    = "unbound directly"
	// The same two at a fixed rate, where the core is not saturated: the
	// forwarding overhead as latency rather than as a share of one core
	// that meshlet and unbound both need.
	s4ForwardedFixed = "meshlet → unbound at a fixed rate"
	s4DirectFixed    = "unbound directly at a fixed rate"
	// The mesh names asked of meshlet's own address, past the redirect:
	// what the NAT of every query and reply costs.
	s4MeshOwn = "meshlet: mesh names on its own address (no redirect)"
	// With -meshlet-before: the earlier build on the same loads.
	s4MeshBefore      = "meshlet-before: mesh names (*.local)"
	s4ForwardedBefore = "meshlet-before → unbound: forwarded names"
	// Scenario s4fast: unbound on the load core with dnsperf, so that
	// meshlet has the server core to itself, as a sidecar whose resolver
	// is another machine has.
	s4FastForwarded       = "meshlet → unbound: forwarded names, unbound on the load core"
	s4FastDirect          = "unbound directly, unbound on the load core"
	s4FastForwardedBefore = "meshlet-before → unbound: forwarded names, unbound on the load core"
)

var (
	dnsperfQPS     = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	dnsperfLost    = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	dnsperfLatency = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
	dnsperfDone    = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	dnsperfRcodes  = regexp.MustCompile(`Response codes:\s+(.*)`)
	dnsperfRcode   = regexp.MustCompile(`([A-Z]+) (\d+) \(`)
)

// Local ports of the dnsperf runs: fixed, and below the ephemeral range,
// so that no run shares a conntrack entry with meshlet's forwarding
// sockets (which would send it past the redirect; see runS4).
const (
	dnsperfMeshPort    = 20053
	dnsperfOutsidePort = 20054
)

type dnsperfResult struct {
	qps       float64
	completed int
	cpu       time.Duration // dnsperf's own
	lost      int
	latencyUs float64
	rcodes    map[string]int
}

func parseDnsperf(out string) (dnsperfResult, error) {
	q, lo, la := dnsperfQPS.FindStringSubmatch(out), dnsperfLost.FindStringSubmatch(out), dnsperfLatency.FindStringSubmatch(out)
	if q == nil || lo == nil || la == nil {
		return dnsperfResult{}, fmt.Errorf("no statistics in dnsperf output:\n%s", out)
	}
	var r dnsperfResult
	r.qps, _ = strconv.ParseFloat(q[1], 64)
	r.lost, _ = strconv.Atoi(lo[1])
	if d := dnsperfDone.FindStringSubmatch(out); d != nil {
		r.completed, _ = strconv.Atoi(d[1])
	}
	lat, _ := strconv.ParseFloat(la[1], 64)
	r.latencyUs = lat * 1e6
	r.rcodes = map[string]int{}
	if rc := dnsperfRcodes.FindStringSubmatch(out); rc != nil {
		for _, m := range dnsperfRcode.FindAllStringSubmatch(rc[1], -1) {
			r.rcodes[m[1]], _ = strconv.Atoi(m[2])
		}
	}
	return r, nil
}

// dnsperf runs one bounded dnsperf from the app host on the load core: one
// socket, at most 100 queries outstanding, limit queries/s when > 0.
func (l *lab) dnsperf(ctx context.Context, port, localPort int, data string, d time.Duration, limit float64) (dnsperfResult, error) {
	return l.dnsperfAt(ctx, l.unbound.IP, port, localPort, data, d, limit)
}

// dnsperfAt is dnsperf to server instead of unbound's address.
func (l *lab) dnsperfAt(ctx context.Context, server netip.Addr, port, localPort int, data string, d time.Duration, limit float64) (dnsperfResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	argv := []string{"dnsperf", "-s", server.String(), "-p", strconv.Itoa(port), "-x", strconv.Itoa(localPort), "-d", data,
		"-l", strconv.Itoa(secs), "-T", "1", "-c", "1", "-q", "100", "-t", "1"}
	if limit > 0 {
		argv = append(argv, "-Q", strconv.Itoa(int(limit)))
	}
	out, cpu, err := runInCPU(ctx, l.w.App, time.Duration(secs)*time.Second+30*time.Second, pinned(l.loadCPU, argv...)...)
	if err != nil {
		return dnsperfResult{}, err
	}
	r, err := parseDnsperf(out)
	r.cpu = cpu
	return r, err
}

// runS4 measures DNS: mesh names answered by meshlet, other names
// forwarded by meshlet to the app's resolver (unbound, answering from
// local data), and the same names asked of unbound directly. The app asks
// unbound's address on port 53, which the redirect hands to meshlet; the
// direct runs use unbound's second port, which the redirect leaves alone,
// so both paths start and end in the same places. unbound shares the
// server core with meshlet, so forwarding is charged against unbound's own
// work; runS4Fast moves unbound to the load core.
func runS4(ctx context.Context, l *lab, rep *Report) error {
	files, err := l.s4Files(ctx)
	if err != nil {
		return err
	}
	targets := []dnsTarget{
		{name: s4Mesh, port: 53, localPort: dnsperfMeshPort, file: files.mesh, bin: l.meshletBin()},
		{name: s4Forwarded, port: 53, localPort: dnsperfOutsidePort, file: files.outside, bin: l.meshletBin(), bypass: true},
		{name: s4Direct, port: unboundDirect, localPort: dnsperfOutsidePort, file: files.outside},
		{name: s4MeshOwn, server: meshletDNS.Addr(), port: int(meshletDNS.Port()), localPort: dnsperfMeshPort, file: files.mesh, bin: l.meshletBin()},
	}
	if b := l.cfg.MeshletBefore; b != "" {
		targets = append(targets,
			dnsTarget{name: s4MeshBefore, port: 53, localPort: dnsperfMeshPort, file: files.mesh, bin: b},
			dnsTarget{name: s4ForwardedBefore, port: 53, localPort: dnsperfOutsidePort, file: files.outside, bin: b})
	}
	if rate := l.cfg.S4FixedRate; rate > 0 {
		targets = append(targets,
			dnsTarget{name: s4ForwardedFixed, port: 53, localPort: dnsperfOutsidePort, file: files.outside, limit: rate, bin: l.meshletBin()},
			dnsTarget{name: s4DirectFixed, port: unboundDirect, localPort: dnsperfOutsidePort, file: files.outside, limit: rate})
	}
	return l.runDNS(ctx, rep, targets)
}

// runS4Fast is S4's forwarding comparison with unbound moved to the load
// core (dnsperf's), and back afterwards: what meshlet's forwarding costs
// when it does not share a core with the resolver.
func runS4Fast(ctx context.Context, l *lab, rep *Report) error {
	if l.loadCPU == "" {
		rep.note("s4fast skipped: not pinning, so there is no core to move unbound to")
		return nil
	}
	files, err := l.s4Files(ctx)
	if err != nil {
		return err
	}
	targets := []dnsTarget{
		{name: s4FastForwarded, port: 53, localPort: dnsperfOutsidePort, file: files.outside, bin: l.meshletBin()},
		{name: s4FastDirect, port: unboundDirect, localPort: dnsperfOutsidePort, file: files.outside},
	}
	if b := l.cfg.MeshletBefore; b != "" {
		targets = append(targets, dnsTarget{name: s4FastForwardedBefore, port: 53, localPort: dnsperfOutsidePort, file: files.outside, bin: b})
	}
	pid := l.unboundP.Cmd.Process.Pid
	if err := l.pin(pid, l.loadCPU); err != nil {
		return err
	}
	defer func() {
		if err := l.pin(pid, l.serverCPU); err != nil {
			l.log("s4fast: %v", err)
		}
	}()
	return l.runDNS(ctx, rep, targets)
}

// meshletDNS is where meshlet's DNS listens in the lab (its default).
var meshletDNS = netip.MustParseAddrPort("127.0.0.1:15053")

type dnsTarget struct {
	name            string
	server          netip.Addr // the invalid Addr: unbound's address
	port, localPort int
	file            string
	limit           float64 // q/s; 0: as fast as it answers
	bin             string  // the meshlet build it needs running; "" any
	bypass          bool    // probe the conntrack bypass after it
}

type s4Files struct{ mesh, outside string }

// s4Files writes dnsperf's query files and resolves each mesh name once,
// so that its service is known and watched.
func (l *lab) s4Files(ctx context.Context) (s4Files, error) {
	mesh := []string{"web.local A", "bulk.local A"}
	for _, s := range footprintServices() {
		mesh = append(mesh, s+".local A")
	}
	var outside []string
	for _, n := range outsideNames(100) {
		outside = append(outside, n+" A")
	}
	var f s4Files
	var err error
	if f.mesh, err = writeFile(l.dir, "dns-mesh.txt", strings.Join(mesh, "\n")+"\n"); err != nil {
		return f, err
	}
	if f.outside, err = writeFile(l.dir, "dns-outside.txt", strings.Join(outside, "\n")+"\n"); err != nil {
		return f, err
	}
	for _, m := range mesh {
		name := strings.Fields(m)[0]
		if _, err := l.resolve(ctx, name); err != nil {
			return f, fmt.Errorf("resolving %s: %w", name, err)
		}
	}
	return f, nil
}

// runDNS runs the rounds of dnsperf over targets, taking turns, and
// records q/s, latency and the CPU meshlet and unbound spent per query.
func (l *lab) runDNS(ctx context.Context, rep *Report, targets []dnsTarget) error {
	cfg := l.cfg
	for _, t := range targets {
		rep.S4 = append(rep.S4, S4Row{Target: t.name})
	}
	for r := range cfg.rounds() {
		for _, t := range targets {
			if t.bin != "" {
				if err := l.useMeshlet(ctx, t.bin); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
			}
			mesh0, unb0 := procCPU(l.meshletPid()), procCPU(l.unboundP.Cmd.Process.Pid)
			server := t.server
			if !server.IsValid() {
				server = l.unbound.IP
			}
			res, err := l.dnsperfAt(ctx, server, t.port, t.localPort, t.file, cfg.S4Duration, t.limit)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			reruns := 0
			// Queries lost at full speed: find a rate without loss, at most
			// three steps down.
			for res.lost > 0 && reruns < 3 && t.limit == 0 {
				reruns++
				limit := 0.85 * res.qps
				l.log("S4 round %d %s: %d lost at %.0f q/s, again at %.0f", r, t.name, res.lost, res.qps, limit)
				mesh0, unb0 = procCPU(l.meshletPid()), procCPU(l.unboundP.Cmd.Process.Pid)
				if res, err = l.dnsperfAt(ctx, server, t.port, t.localPort, t.file, cfg.S4Duration, limit); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
			}
			var meshUs, unbUs, perfUs float64
			if res.completed > 0 {
				meshUs = float64((procCPU(l.meshletPid()) - mesh0).Microseconds()) / float64(res.completed)
				unbUs = float64((procCPU(l.unboundP.Cmd.Process.Pid) - unb0).Microseconds()) / float64(res.completed)
				perfUs = float64(res.cpu.Microseconds()) / float64(res.completed)
			}
			l.log("S4 round %d %-36s %8.0f q/s  %5.0f µs avg  %d lost  CPU µs/query meshlet %.2f unbound %.2f dnsperf %.2f",
				r, t.name, res.qps, res.latencyUs, res.lost, meshUs, unbUs, perfUs)
			if cfg.measured(r) {
				row := rep.s4(t.name)
				row.QPS = append(row.QPS, res.qps)
				row.LatencyUs = append(row.LatencyUs, res.latencyUs)
				row.MeshletUs = append(row.MeshletUs, meshUs)
				row.UnboundUs = append(row.UnboundUs, unbUs)
				row.DnsperfUs = append(row.DnsperfUs, perfUs)
				row.Lost += res.lost
				row.Reruns += reruns
				for code, n := range res.rcodes {
					if code != "NOERROR" {
						row.NotNoerror += n
					}
				}
			}
			if !t.bypass {
				continue
			}
			// Right after forwarding load: do the app's own lookups, from
			// ephemeral ports as a stub resolver's, still reach meshlet?
			probes, bypassed := l.probeBypass(ctx, 200)
			l.log("S4 round %d: %d of %d mesh lookups from ephemeral ports got no VIP after %s", r, bypassed, probes, t.name)
			if cfg.measured(r) {
				rep.S4Bypass.Probes += probes
				rep.S4Bypass.Bypassed += bypassed
			}
		}
	}
	return nil
}

// probeBypass sends n lookups of web.local the way the app's stub resolver
// does (a new socket on an ephemeral port each) and counts those that got
// no VIP. meshlet forwards every outside query from a new socket on an
// ephemeral port; its conntrack entry (not redirected: the socket is
// marked) lives on for 30 s, and an app query that happens to leave from
// the same port to the same resolver matches it and reaches the resolver
// itself, past meshlet.
func (l *lab) probeBypass(ctx context.Context, n int) (probes, bypassed int) {
	server := netip.AddrPortFrom(l.unbound.IP, 53)
	for range n {
		probes++
		if a, err := l.queryFrom(ctx, l.w.App, 0, server, "web.local"); err != nil || a != l.webVIP {
			bypassed++
		}
	}
	return probes, bypassed
}
