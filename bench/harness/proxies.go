package harness

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Ports of the comparison proxies, on the app host's loopback (where a
// sidecar proxy would listen), and of the bulk server in an instance.
const (
	nginxPort      = 18080
	haproxyPort    = 18081
	haproxyTCPPort = 18082
	bulkPort       = 9000
	unboundDirect  = 5353 // unbound also listens here: a port the redirect leaves alone
	pprofAddr      = "127.0.0.1:15099"

	// S1's other policies: nginx and HAProxy listen on one port each.
	nginxStickyPort   = 18083
	nginxLeastPort    = 18084
	haproxyStickyPort = 18085
	haproxyLeastPort  = 18086

	// bench/cmd/h1proto, the smallest Go forwarder: a measuring stick.
	goMinimalPort = 18090
)

// S1's balancing policies.
const (
	policyRoundRobin = "round-robin"
	policySticky     = "sticky"
	policyLeast      = "least-request"
)

// Services registered for the policies other than round-robin, with the
// Consul meta meshlet reads its policy from; their instances are web's.
var policyServices = map[string]struct {
	service string
	meta    map[string]string
}{
	policySticky: {"websticky", map[string]string{"meshlet-sticky": "cookie"}},
	policyLeast:  {"webleast", map[string]string{"meshlet-balance": "least-request"}},
}

// nginxHead is the start of an nginx configuration of one worker whose
// files go to dir (temporary ones named prefix+"body" and so on), up to
// inside its http block, which the caller completes and closes.
func nginxHead(dir, prefix string) string {
	return fmt.Sprintf(`# written by the meshlet benchmark harness
daemon off;
master_process on;
worker_processes 1;
user www-data www-data;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/%[2]sbody;
  proxy_temp_path %[1]s/%[2]sproxy;
  fastcgi_temp_path %[1]s/%[2]sfastcgi;
  uwsgi_temp_path %[1]s/%[2]suwsgi;
  scgi_temp_path %[1]s/%[2]sscgi;
  keepalive_requests 1000000;
  keepalive_timeout 3600s;
`, dir, prefix)
}

// nginxConfig is one worker with keep-alive to the instances, round-robin,
// adding the same X-Forwarded-* headers meshlet adds.
func nginxConfig(dir string, instances []netip.AddrPort) string {
	var servers strings.Builder
	for _, a := range instances {
		fmt.Fprintf(&servers, "    server %s;\n", a)
	}
	return nginxHead(dir, "nginx-") + fmt.Sprintf(`  # listens on %[3]d (round-robin), and one port per other policy
  upstream web {
%[2]s    keepalive 256;
    keepalive_requests 1000000;
  }
  # Open-source nginx has no sticky cookie: the nearest is a consistent
  # hash of the client's Cookie header.
  upstream websticky {
    hash $http_cookie consistent;
%[2]s    keepalive 256;
    keepalive_requests 1000000;
  }
  upstream webleast {
    least_conn;
%[2]s    keepalive 256;
    keepalive_requests 1000000;
  }
%[4]s%[5]s%[6]s}
`, dir, servers.String(), nginxPort, nginxServer(nginxPort, "web"), nginxServer(nginxStickyPort, "websticky"), nginxServer(nginxLeastPort, "webleast"))
}

func nginxServer(port int, upstream string) string {
	return fmt.Sprintf(`  server {
    listen 127.0.0.1:%d;
    location / {
      proxy_pass http://%s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }
  }
`, port, upstream)
}

// haproxyHead is the start of every HAProxy configuration: one thread.
const haproxyHead = `# written by the meshlet benchmark harness
global
  nbthread 1
  maxconn 8000
defaults
  timeout connect 5s
  timeout client 3600s
  timeout server 60s
`

// haproxyConfig is one thread, round-robin with connection reuse for HTTP,
// and a mode tcp frontend to the bulk server for S3.
func haproxyConfig(instances []netip.AddrPort, bulk netip.AddrPort) string {
	var b strings.Builder
	b.WriteString(haproxyHead)
	for _, fe := range []struct {
		name    string
		port    int
		balance string
		sticky  bool
	}{
		{"web", haproxyPort, "roundrobin", false},
		{"websticky", haproxyStickyPort, "roundrobin", true},
		{"webleast", haproxyLeastPort, "leastconn", false},
	} {
		fmt.Fprintf(&b, `frontend %[1]s_in
  mode http
  bind 127.0.0.1:%[2]d
  option http-keep-alive
  option forwardfor
  http-request set-header X-Forwarded-Host %%[req.hdr(host)]
  http-request set-header X-Forwarded-Proto http
  default_backend %[1]s
backend %[1]s
  mode http
  balance %[3]s
  http-reuse always
`, fe.name, fe.port, fe.balance)
		if fe.sticky {
			b.WriteString("  cookie SRV insert indirect nocache\n")
		}
		for i, a := range instances {
			fmt.Fprintf(&b, "  server web-%d %s", i+1, a)
			if fe.sticky {
				fmt.Fprintf(&b, " cookie web-%d", i+1)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(haproxyTCP(haproxyTCPPort, bulk))
	return b.String()
}

// haproxyTCP is a mode tcp frontend on port to the bulk server at bulk.
func haproxyTCP(port int, bulk netip.AddrPort) string {
	return fmt.Sprintf(`frontend tcp_in
  mode tcp
  bind 127.0.0.1:%d
  default_backend bulk
backend bulk
  mode tcp
  server bulk-1 %s
`, port, bulk)
}

// outsideNames are the names unbound answers itself (S4's forwarded
// names): a zone under the documentation domain "example.".
func outsideNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("host%d.bench.example", i)
	}
	return names
}

// unboundConfig answers outsideNames from local data and refuses every other
// name: no recursion, no forwarding, nothing ever leaves the lab (whose
// namespaces have no route out anyway). It listens on port 53, where
// meshlet forwards, and on unboundDirect, which the app's redirect leaves
// alone, so that the app can also ask it directly.
func unboundConfig(dir string, names []string) string {
	var data strings.Builder
	for i, n := range names {
		fmt.Fprintf(&data, "  local-data: \"%s. 300 IN A 192.0.2.%d\"\n", n, 1+i%250)
	}
	return fmt.Sprintf(`# written by the meshlet benchmark harness
server:
  directory: "%[1]s"
  chroot: ""
  username: ""
  pidfile: ""
  logfile: ""
  use-syslog: no
  verbosity: 0
  num-threads: 1
  so-reuseport: no
  interface: 0.0.0.0@53
  interface: 0.0.0.0@%[2]d
  do-ip6: no
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  local-zone: "." refuse
  local-zone: "bench.example." static
%[3]sremote-control:
  control-enable: no
`, dir, unboundDirect, data.String())
}

// writeFile writes a generated configuration into dir.
func writeFile(dir, name, content string) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(content), 0o644)
}
