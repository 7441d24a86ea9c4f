package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"
)

// httpTarget is one way for the app to reach the instances.
type httpTarget struct {
	name string
	url  string               // from the app host
	host string               // Host header, when the URL has an address
	cpu  func() time.Duration // CPU used so far by the proxy; nil for direct
	pid  func() int           // the proxy's process; nil for direct
	// headers are more request headers ("Cookie: ...") for wrk.
	headers []string
	// bin is the meshlet binary that must run for this target ("": any).
	bin string
}

// httpTargets are direct (one instance, no proxy), meshlet (the name the
// app uses: DNS, the iptables redirect, round-robin over 3), nginx and
// HAProxy (sidecar-style on the app's loopback, round-robin over 3), and
// go-minimal (bench/cmd/h1proto: what a Go forwarder without net/http
// costs, for reference).
func (l *lab) httpTargets(path string) []httpTarget {
	ts := []httpTarget{
		{name: "direct", url: fmt.Sprintf("http://%s%s", l.webAddrs()[0], path)},
		l.meshletTarget(path),
		l.nginxTarget(nginxPort, path),
		l.haproxyTarget(haproxyPort, path),
		{name: "go-minimal", url: fmt.Sprintf("http://127.0.0.1:%d%s", goMinimalPort, path),
			cpu: func() time.Duration { return procCPU(l.gomin.Cmd.Process.Pid) }, pid: func() int { return l.gomin.Cmd.Process.Pid }},
	}
	if b := l.beforeTarget(ts[1]); b != nil {
		ts = append(ts, *b)
	}
	return ts
}

// beforeTarget is m measured with the -meshlet-before build (meshlet is
// restarted with it, and back), or nil without one.
func (l *lab) beforeTarget(m httpTarget) *httpTarget {
	if l.cfg.MeshletBefore == "" {
		return nil
	}
	m.name, m.bin = "meshlet-before", l.cfg.MeshletBefore
	return &m
}

// meshletTarget is web.local through meshlet: its VIP, redirected by the
// rules, with the Host the app would send.
func (l *lab) meshletTarget(path string) httpTarget {
	return httpTarget{name: "meshlet", url: fmt.Sprintf("http://%s%s", l.webVIP, path), host: "web.local",
		cpu: func() time.Duration { return procCPU(l.meshletPid()) }, pid: l.meshletPid, bin: l.meshletBin()}
}

func (l *lab) nginxTarget(port int, path string) httpTarget {
	return httpTarget{name: "nginx", url: fmt.Sprintf("http://127.0.0.1:%d%s", port, path),
		cpu: func() time.Duration { return treeCPU(l.nginx.Cmd.Process.Pid) }, pid: func() int { return l.nginx.Cmd.Process.Pid }}
}

func (l *lab) haproxyTarget(port int, path string) httpTarget {
	return httpTarget{name: "haproxy", url: fmt.Sprintf("http://127.0.0.1:%d%s", port, path),
		cpu: func() time.Duration { return treeCPU(l.haproxy.Cmd.Process.Pid) }, pid: func() int { return l.haproxy.Cmd.Process.Pid }}
}

// policyTargets are the targets of one S1 policy, or nil and the reason
// when meshlet cannot be measured with it. For stickiness every client
// sends the cookie a first answer set (meshlet's, HAProxy's, and the whole
// header is what nginx hashes), as a browser that came back would; all
// its requests then go to one instance.
func (l *lab) policyTargets(ctx context.Context, policy, path string) ([]httpTarget, string) {
	if policy == policyRoundRobin {
		return l.httpTargets(path), ""
	}
	ps, ok := policyServices[policy]
	if !ok {
		return nil, fmt.Sprintf("unknown policy %q", policy)
	}
	// Policies come from Consul meta; a build that sets no sticky cookie
	// for meshlet-sticky=cookie reads no meta at all.
	cookie, err := l.stickyCookie(ctx)
	if err != nil {
		return nil, err.Error()
	}
	if cookie == "" {
		return nil, "meshlet set no sticky cookie for a service with meta meshlet-sticky=cookie: this build takes no policy from Consul meta yet"
	}
	vip, err := l.resolve(ctx, ps.service+".local")
	if err != nil {
		return nil, fmt.Sprintf("resolving %s.local: %v", ps.service, err)
	}
	if err := l.waitEndpoints(ctx, 3, ps.service); err != nil {
		return nil, err.Error()
	}
	m := l.meshletTarget(path)
	m.url, m.host = fmt.Sprintf("http://%s%s", vip, path), ps.service+".local"
	if policy == policySticky {
		n, h := l.nginxTarget(nginxStickyPort, path), l.haproxyTarget(haproxyStickyPort, path)
		hdr := "Cookie: " + cookie + "; SRV=web-1"
		m.headers, n.headers, h.headers = []string{hdr}, []string{hdr}, []string{hdr}
		return []httpTarget{m, n, h}, ""
	}
	return []httpTarget{m, l.nginxTarget(nginxLeastPort, path), l.haproxyTarget(haproxyLeastPort, path)}, ""
}

// stickyCookie asks meshlet once for the sticky service and returns the
// "name=value" of the cookie it set ("" if none).
func (l *lab) stickyCookie(ctx context.Context) (string, error) {
	service := policyServices[policySticky].service
	vip, err := l.resolve(ctx, service+".local")
	if err != nil {
		return "", fmt.Errorf("resolving %s.local: %w", service, err)
	}
	if err := l.waitEndpoints(ctx, 3, service); err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/payload", vip), nil)
	if err != nil {
		return "", err
	}
	req.Host = service + ".local"
	resp, err := l.w.App.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return "", fmt.Errorf("asking %s once: %w", service, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	for _, c := range resp.Cookies() {
		if c.Name == "meshlet-"+service {
			return c.Name + "=" + c.Value, nil
		}
	}
	return "", nil
}

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkTotal    = regexp.MustCompile(`(\d+) requests in`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSockErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

type wrkResult struct {
	rps      float64
	requests int
	errors   int
}

func parseWrk(out string) (wrkResult, error) {
	m := wrkRPS.FindStringSubmatch(out)
	t := wrkTotal.FindStringSubmatch(out)
	if m == nil || t == nil {
		return wrkResult{}, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	var r wrkResult
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	r.requests, _ = strconv.Atoi(t[1])
	if n := wrkNon2xx.FindStringSubmatch(out); n != nil {
		k, _ := strconv.Atoi(n[1])
		r.errors += k
	}
	if s := wrkSockErrs.FindStringSubmatch(out); s != nil {
		for _, v := range s[1:] {
			k, _ := strconv.Atoi(v)
			r.errors += k
		}
	}
	return r, nil
}

// wrk runs one bounded wrk from the app host on the load core.
func (l *lab) wrk(ctx context.Context, conns int, d time.Duration, t httpTarget) (wrkResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	argv := []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--timeout", "2s"}
	if t.host != "" {
		argv = append(argv, "-H", "Host: "+t.host)
	}
	for _, h := range t.headers {
		argv = append(argv, "-H", h)
	}
	out, err := runIn(ctx, l.w.App, time.Duration(secs)*time.Second+30*time.Second, pinned(l.loadCPU, append(argv, t.url)...)...)
	if err != nil {
		return wrkResult{}, err
	}
	return parseWrk(out)
}

// runS1 measures throughput and proxy CPU with wrk, for each policy.
func runS1(ctx context.Context, l *lab, rep *Report) error {
	cfg := l.cfg
	type policyRun struct {
		policy  string
		targets []httpTarget
	}
	var runs []policyRun
	for _, policy := range cfg.S1Policies {
		targets, why := l.policyTargets(ctx, policy, "/payload")
		if targets == nil {
			rep.note("S1 %s: not measured: %s.", policy, why)
			continue
		}
		runs = append(runs, policyRun{policy, targets})
		for _, conns := range cfg.S1Conns {
			for _, t := range targets {
				rep.S1 = append(rep.S1, S1Row{Policy: policy, Conns: conns, Target: t.name})
			}
		}
	}
	for r := range cfg.rounds() {
		for _, pr := range runs {
			for _, conns := range cfg.S1Conns {
				for _, t := range pr.targets {
					if err := l.measureWrk(ctx, rep, r, pr.policy, conns, t); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// measureWrk runs wrk once against t and, in a measured round, adds
// req/s and the proxy's CPU, system calls and context switches per
// request to its row.
func (l *lab) measureWrk(ctx context.Context, rep *Report, r int, policy string, conns int, t httpTarget) error {
	cfg := l.cfg
	if t.bin != "" {
		if err := l.useMeshlet(ctx, t.bin); err != nil {
			return fmt.Errorf("%s %s: %w", policy, t.name, err)
		}
	}
	var before time.Duration
	var sys0, sw0 int64
	var perf *syscallCounter
	if t.cpu != nil {
		before, sys0, sw0 = t.cpu(), procSyscalls(t.pid()), procSwitches(t.pid())
		// wrk's whole run and a little more: the proxy is idle around it.
		perf = countSyscalls(ctx, t.pid(), cfg.S1Duration.Round(time.Second)+500*time.Millisecond)
	}
	res, err := l.wrk(ctx, conns, cfg.S1Duration, t)
	if err != nil {
		return fmt.Errorf("%s %s: %w", policy, t.name, err)
	}
	var cpu10k, sysPer, swPer, allPer float64
	allPer = -1
	if t.cpu != nil && res.requests > 0 {
		n := float64(res.requests)
		cpu10k = (t.cpu() - before).Seconds() / n * 10000
		sysPer = float64(procSyscalls(t.pid())-sys0) / n
		swPer = float64(procSwitches(t.pid())-sw0) / n
		if k := perf.wait(); k >= 0 {
			allPer = float64(k) / n
		}
	}
	l.log("S1 round %d %-13s c=%d %-14s %8.0f req/s  %.3f CPU-s/10k  %.1f read/write/req  %.1f syscalls/req  %.2f switches/req  %d errors",
		r, policy, conns, t.name, res.rps, cpu10k, sysPer, allPer, swPer, res.errors)
	if !cfg.measured(r) {
		return nil
	}
	row := rep.s1(policy, conns, t.name)
	row.RPS = append(row.RPS, res.rps)
	if t.cpu != nil {
		row.CPU10k = append(row.CPU10k, cpu10k)
		row.Syscalls = append(row.Syscalls, sysPer)
		row.Switches = append(row.Switches, swPer)
		if allPer >= 0 {
			row.AllSyscalls = append(row.AllSyscalls, allPer)
		}
	}
	row.Errors += res.errors
	return nil
}
