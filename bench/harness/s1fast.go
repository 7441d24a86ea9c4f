package harness

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/netlab"
)

// S1's proxy-bound variant: the instances are nginx answering 1 KiB from
// memory (far faster than any proxy), so that the proxy saturates first,
// as it does for a user whose service is fast. The proxy under test has
// the server core to itself; the instances share the load core with wrk.
const (
	policyProxyBound = "proxy-bound"

	fastPort          = 8081  // the fast instance in each instance host
	nginxFastPort     = 18087 // the nginx and HAProxy proxies of the fast service
	haproxyFastPort   = 18088
	goMinimalFastPort = 18091
	fastService       = "webfast"
)

// fastLab is what the proxy-bound variant adds to the lab, started once.
type fastLab struct {
	instances []netip.AddrPort
	nginx     *netlab.Proc // the proxy
	haproxy   *netlab.Proc
	gomin     *netlab.Proc
}

// fastInstanceConfig is one nginx worker answering every request with a
// fixed 1 KiB body from its configuration.
func fastInstanceConfig(dir string, listen netip.AddrPort) string {
	return nginxHead(dir, "") + fmt.Sprintf(`  server {
    listen %s;
    location / {
      default_type application/octet-stream;
      return 200 "%s";
    }
  }
}
`, listen, strings.Repeat("x", 1024))
}

// fastProxyConfig is the nginx proxy of the fast service, as nginxConfig's.
func fastProxyConfig(dir string, instances []netip.AddrPort) string {
	var servers strings.Builder
	for _, a := range instances {
		fmt.Fprintf(&servers, "    server %s;\n", a)
	}
	return nginxHead(dir, "") + fmt.Sprintf(`  upstream %[2]s {
%[1]s    keepalive 256;
    keepalive_requests 1000000;
  }
%[3]s}
`, servers.String(), fastService, nginxServer(nginxFastPort, fastService))
}

// fastHAProxyConfig is HAProxy for the fast service, as haproxyConfig's.
func fastHAProxyConfig(instances []netip.AddrPort) string {
	var b strings.Builder
	b.WriteString(haproxyHead)
	fmt.Fprintf(&b, `frontend fast_in
  mode http
  bind 127.0.0.1:%d
  option http-keep-alive
  option forwardfor
  http-request set-header X-Forwarded-Host %%[req.hdr(host)]
  http-request set-header X-Forwarded-Proto http
  default_backend fast
backend fast
  mode http
  balance roundrobin
  http-reuse always
`, haproxyFastPort)
	for i, a := range instances {
		fmt.Fprintf(&b, "  server fast-%d %s\n", i+1, a)
	}
	return b.String()
}

// startFast starts the fast instances (pinned with the load generator),
// registers them in Consul as webfast, and starts the nginx, HAProxy and
// go-minimal proxies of them on the server core.
func (l *lab) startFast(ctx context.Context) (*fastLab, error) {
	fl := &fastLab{}
	for i, in := range l.w.Instances {
		dir := filepath.Join(l.dir, fmt.Sprintf("fast-%d", i+1))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		a := netip.AddrPortFrom(in.Host.IP, fastPort)
		conf, err := writeFile(dir, "nginx.conf", fastInstanceConfig(dir, a))
		if err != nil {
			return nil, err
		}
		if _, err := in.Host.Start("nginx-fast", nil, pinned(l.loadCPU, "nginx", "-c", conf, "-p", dir, "-e", filepath.Join(dir, "nginx-error.log"))...); err != nil {
			return nil, err
		}
		if err := l.w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: fmt.Sprintf("%s-%d", fastService, i+1), Name: fastService, Address: a.Addr().String(), Port: int(a.Port()),
		}); err != nil {
			return nil, fmt.Errorf("registering %s: %w", fastService, err)
		}
		fl.instances = append(fl.instances, a)
	}
	dir := filepath.Join(l.dir, "nginx-fast-proxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf, err := writeFile(dir, "nginx.conf", fastProxyConfig(dir, fl.instances))
	if err != nil {
		return nil, err
	}
	if fl.nginx, err = l.w.App.Start("nginx-fast-proxy", nil, pinned(l.serverCPU, "nginx", "-c", conf, "-p", dir, "-e", filepath.Join(dir, "nginx-error.log"))...); err != nil {
		return nil, err
	}
	if conf, err = writeFile(l.dir, "haproxy-fast.cfg", fastHAProxyConfig(fl.instances)); err != nil {
		return nil, err
	}
	if fl.haproxy, err = l.w.App.Start("haproxy-fast", nil, pinned(l.serverCPU, "haproxy", "-db", "-f", conf)...); err != nil {
		return nil, err
	}
	var ups []string
	for _, a := range fl.instances {
		ups = append(ups, a.String())
	}
	if fl.gomin, err = l.w.App.Start("h1proto-fast", []string{"GOMAXPROCS=1"}, pinned(l.serverCPU, l.h1proto,
		"-listen", fmt.Sprintf("127.0.0.1:%d", goMinimalFastPort), "-upstreams", strings.Join(ups, ","))...); err != nil {
		return nil, err
	}
	for p, url := range map[*netlab.Proc]string{
		fl.nginx:   fmt.Sprintf("http://127.0.0.1:%d/payload", nginxFastPort),
		fl.haproxy: fmt.Sprintf("http://127.0.0.1:%d/payload", haproxyFastPort),
		fl.gomin:   fmt.Sprintf("http://127.0.0.1:%d/payload", goMinimalFastPort),
	} {
		if err := l.waitHTTP(ctx, p, url); err != nil {
			return nil, err
		}
	}
	return fl, nil
}

// fastTargets are the proxy-bound variant's targets.
func (l *lab) fastTargets(ctx context.Context, fl *fastLab) ([]httpTarget, error) {
	vip, err := l.resolve(ctx, fastService+".local")
	if err != nil {
		return nil, fmt.Errorf("resolving %s.local: %w", fastService, err)
	}
	if err := l.waitEndpoints(ctx, 3, fastService); err != nil {
		return nil, err
	}
	const path = "/payload"
	proc := func(name string, p *netlab.Proc, port int) httpTarget {
		return httpTarget{name: name, url: fmt.Sprintf("http://127.0.0.1:%d%s", port, path),
			cpu: func() time.Duration { return treeCPU(p.Cmd.Process.Pid) }, pid: func() int { return p.Cmd.Process.Pid }}
	}
	m := l.meshletTarget(path)
	m.url, m.host = fmt.Sprintf("http://%s%s", vip, path), fastService+".local"
	ts := []httpTarget{
		{name: "direct", url: fmt.Sprintf("http://%s%s", fl.instances[0], path)},
		m,
		proc("nginx", fl.nginx, nginxFastPort),
		proc("haproxy", fl.haproxy, haproxyFastPort),
		proc("go-minimal", fl.gomin, goMinimalFastPort),
	}
	if b := l.beforeTarget(m); b != nil {
		ts = append(ts, *b)
	}
	return ts, nil
}

// runS1Fast is S1's proxy-bound variant (scenario "s1fast"): round-robin
// over three fast instances, each proxy alone on the server core.
func runS1Fast(ctx context.Context, l *lab, rep *Report) error {
	if l.fast == nil {
		fl, err := l.startFast(ctx)
		if err != nil {
			return err
		}
		l.fast = fl
	}
	fl := l.fast
	targets, err := l.fastTargets(ctx, fl)
	if err != nil {
		return err
	}
	conns := l.cfg.S1FastConns
	for _, c := range conns {
		for _, t := range targets {
			rep.S1 = append(rep.S1, S1Row{Policy: policyProxyBound, Conns: c, Target: t.name})
		}
	}
	for r := range l.cfg.rounds() {
		for _, c := range conns {
			for _, t := range targets {
				if err := l.measureWrk(ctx, rep, r, policyProxyBound, c, t); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
