// Command h2bench is the HTTP/2 and gRPC benchmark (BENCHMARKS.md, S8),
// not part of `make test`: in a namespace lab (integration/meshlab) with
// 3 grpcinstance hosts, it measures, from the app's namespace,
//
//   - h2load (h2c, -c 16 -m 10) req/s through meshlet, nginx (http2 in,
//     HTTP/1.1 out) and HAProxy (proto h2 both ways), and directly to one
//     instance; with the proxy's CPU seconds per 1000 requests;
//   - gRPC unary calls, one channel per worker: the most calls/s over
//     -grpc-workers workers, then the latency at a fixed rate (p50, p99)
//     through meshlet, nginx (grpc_pass) and HAProxy, and direct.
//
// Run as root from the repository: go run ./bench/cmd/h2bench -out DIR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

const (
	nginxH2Port   = 18180 // http2 (h2c) in, HTTP/1.1 to the instances
	nginxGRPCPort = 18181 // grpc_pass
	haproxyH2Port = 18182 // proto h2 both ways
)

func main() {
	out := flag.String("out", "bench/out/h2", "directory of the results and the lab's logs")
	dur := flag.Duration("d", 10*time.Second, "length of each h2load and gRPC run")
	rate := flag.Int("rate", 2000, "gRPC calls per second of the fixed-rate runs")
	workers := flag.Int("grpc-workers", 32, "gRPC workers (one channel each, one call at a time) of the max-rate runs")
	flag.Parse()
	if err := run(*out, *dur, *rate, *workers); err != nil {
		log.Fatal(err)
	}
}

func run(out string, dur time.Duration, rate, workers int) error {
	ctx := context.Background()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	netlab.Sweep()
	binDir, err := os.MkdirTemp("", "h2bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	bins, err := meshlab.Build(ctx, binDir)
	if err != nil {
		return err
	}
	grpcBin := filepath.Join(binDir, "grpcinstance")
	if o, err := exec.Command("go", "build", "-o", grpcBin, "./integration/testbin/grpcinstance").CombinedOutput(); err != nil {
		return fmt.Errorf("building grpcinstance: %v: %s", err, o)
	}
	w, err := meshlab.Start(ctx, bins, meshlab.Options{Service: "seed", Instances: 1, Meshlet: []string{"--log-level", "warn"}})
	if err != nil {
		return err
	}
	defer w.Close()
	var h2Addrs, grpcAddrs []netip.AddrPort
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("g%d", i)
		h, err := w.Lab.AddHost(name)
		if err != nil {
			return err
		}
		if _, err := h.Start("grpcinstance", nil, grpcBin, "-grpc", ":9090", "-http", ":8080", "-name", name); err != nil {
			return err
		}
		for _, reg := range []struct {
			service string
			port    int
			meta    string
		}{{"grpc", 9090, "grpc"}, {"h2web", 8080, "http2"}} {
			err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
				ID: name + "-" + reg.service, Name: reg.service, Address: h.IP.String(), Port: reg.port,
				Meta:  map[string]string{"meshlet-protocol": reg.meta},
				Check: &api.AgentServiceCheck{HTTP: fmt.Sprintf("http://%s:8080/health", h.IP), Interval: "1s", Timeout: "1s"},
			})
			if err != nil {
				return err
			}
		}
		h2Addrs = append(h2Addrs, netip.AddrPortFrom(h.IP, 8080))
		grpcAddrs = append(grpcAddrs, netip.AddrPortFrom(h.IP, 9090))
	}
	for _, s := range []string{"grpc", "h2web"} {
		if err := w.WaitPassing(ctx, s, 3); err != nil {
			return err
		}
	}
	nginxPID, haproxyPID, err := startProxies(w, out, h2Addrs, grpcAddrs)
	if err != nil {
		return err
	}
	meshletPID := w.Meshlet.Cmd.Process.Pid // `ip netns exec` execs meshlet
	vip := func(name string) (netip.Addr, error) {
		o, err := w.App.Run(ctx, "getent", "hosts", name)
		if err != nil {
			return netip.Addr{}, err
		}
		return netip.ParseAddr(strings.Fields(o)[0])
	}
	h2VIP, err := vip("h2web.local")
	if err != nil {
		return err
	}
	grpcVIP, err := vip("grpc.local")
	if err != nil {
		return err
	}

	report := &strings.Builder{}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(report, "h2bench %s, %d s runs, load average before: %s\n", time.Now().UTC().Format(time.RFC3339), int(dur.Seconds()), strings.TrimSpace(string(load)))

	fmt.Fprintf(report, "\nh2load h2c, 16 connections x 10 streams, GET / (a 3-byte answer)\n")
	fmt.Fprintf(report, "| path | req/s | proxy CPU ms / 1000 req |\n| --- | ---: | ---: |\n")
	for _, tc := range []struct {
		name string
		url  string
		pid  int
	}{
		{"direct (one instance)", fmt.Sprintf("http://%s/", h2Addrs[0]), 0},
		{"meshlet", fmt.Sprintf("http://%s:80/", h2VIP), meshletPID},
		{"nginx (http2 in, HTTP/1.1 out)", fmt.Sprintf("http://127.0.0.1:%d/", nginxH2Port), nginxPID},
		{"HAProxy (proto h2)", fmt.Sprintf("http://127.0.0.1:%d/", haproxyH2Port), haproxyPID},
	} {
		cpu0 := cpuOf(tc.pid)
		o, err := w.App.Run(ctx, "h2load", "-c", "16", "-m", "10", "-t", "1", "-D", strconv.Itoa(int(dur.Seconds())), tc.url)
		cpu := cpuOf(tc.pid) - cpu0
		if err != nil {
			return fmt.Errorf("h2load %s: %v: %s", tc.name, err, o)
		}
		os.WriteFile(filepath.Join(out, "h2load-"+strings.Fields(tc.name)[0]+".txt"), []byte(o), 0o644)
		rps, done := h2loadResult(o)
		perK := "-"
		if tc.pid != 0 && done > 0 {
			perK = fmt.Sprintf("%.1f", cpu.Seconds()*1000/float64(done)*1000)
		}
		fmt.Fprintf(report, "| %s | %.0f | %s |\n", tc.name, rps, perK)
	}

	fmt.Fprintf(report, "\ngRPC unary (UnaryCall, empty request, 3-instance round robin)\n")
	fmt.Fprintf(report, "| path | max calls/s (%d workers) | proxy CPU ms / 1000 calls | p50 at %d/s (µs) | p99 at %d/s (µs) |\n| --- | ---: | ---: | ---: | ---: |\n", workers, rate, rate)
	for _, tc := range []struct {
		name string
		addr string
		pid  int
	}{
		{"direct (one instance)", grpcAddrs[0].String(), 0},
		{"meshlet", netip.AddrPortFrom(grpcVIP, 80).String(), meshletPID},
		{"nginx (grpc_pass)", fmt.Sprintf("127.0.0.1:%d", nginxGRPCPort), nginxPID},
		{"HAProxy (proto h2)", fmt.Sprintf("127.0.0.1:%d", haproxyH2Port), haproxyPID},
	} {
		cpu0 := cpuOf(tc.pid)
		calls, failed, err := maxRate(ctx, w, tc.addr, workers, dur)
		cpu := cpuOf(tc.pid) - cpu0
		if err != nil {
			return fmt.Errorf("gRPC %s: %w", tc.name, err)
		}
		p50, p99, lfailed, err := fixedRate(ctx, w, tc.addr, rate, dur)
		if err != nil {
			return fmt.Errorf("gRPC %s: %w", tc.name, err)
		}
		perK := "-"
		if tc.pid != 0 && calls > 0 {
			perK = fmt.Sprintf("%.1f", cpu.Seconds()*1000/float64(calls)*1000)
		}
		fmt.Fprintf(report, "| %s | %.0f | %s | %d | %d |\n", tc.name, float64(calls)/dur.Seconds(), perK, p50.Microseconds(), p99.Microseconds())
		if failed+lfailed > 0 {
			fmt.Fprintf(report, "  (%s: %d calls failed)\n", tc.name, failed+lfailed)
		}
	}
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Fprintf(report, "\nload average after: %s\n", strings.TrimSpace(string(load)))
	fmt.Print(report.String())
	return os.WriteFile(filepath.Join(out, "h2bench.md"), []byte(report.String()), 0o644)
}

// cpuOf is the user and system CPU time of a process and its children
// so far (0 for pid 0).
func cpuOf(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	var total time.Duration
	for _, p := range append([]int{pid}, children(pid)...) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		total += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
	}
	return total
}

// children are the pids of pid's children (nginx's and HAProxy's workers).
func children(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// h2loadResult reads h2load's req/s and its count of 2xx answers.
func h2loadResult(o string) (float64, int) {
	var rps float64
	var done int
	for _, line := range strings.Split(o, "\n") {
		if strings.HasPrefix(line, "finished in") {
			if i := strings.Index(line, ", "); i > 0 {
				fmt.Sscanf(strings.TrimSpace(line[i+2:]), "%f req/s", &rps)
			}
		}
		if strings.HasPrefix(line, "status codes:") {
			fmt.Sscanf(strings.TrimPrefix(line, "status codes:"), "%d 2xx", &done)
		}
	}
	return rps, done
}

// channel is a gRPC channel of the app to addr.
func channel(w *meshlab.World, addr string) (*grpc.ClientConn, testpb.TestServiceClient, error) {
	cc, err := grpc.NewClient("passthrough:///bench", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return w.App.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		return nil, nil, err
	}
	return cc, testpb.NewTestServiceClient(cc), nil
}

// maxRate runs workers channels, each making one call after another, for
// dur, and returns the calls made and failed.
func maxRate(ctx context.Context, w *meshlab.World, addr string, workers int, dur time.Duration) (int64, int64, error) {
	var calls, failed atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	for range workers {
		cc, client, err := channel(w, addr)
		if err != nil {
			return 0, 0, err
		}
		defer cc.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if calls.Load() == failed.Load() {
		return 0, 0, errors.New("every call failed")
	}
	return calls.Load() - failed.Load(), failed.Load(), nil
}

// fixedRate starts a call every 1/rate s on 8 channels, for dur, and
// returns the p50 and p99 latency of those that succeeded.
func fixedRate(ctx context.Context, w *meshlab.World, addr string, rate int, dur time.Duration) (p50, p99 time.Duration, failed int64, err error) {
	var clients []testpb.TestServiceClient
	for range 8 {
		cc, client, err := channel(w, addr)
		if err != nil {
			return 0, 0, 0, err
		}
		defer cc.Close()
		clients = append(clients, client)
	}
	n := int(dur.Seconds() * float64(rate))
	lat := make([]time.Duration, n)
	var nfailed atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range n {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			if _, err := clients[i%len(clients)].UnaryCall(cctx, &testpb.SimpleRequest{}); err != nil {
				nfailed.Add(1)
				lat[i] = -1
				return
			}
			lat[i] = time.Since(start)
		}()
	}
	wg.Wait()
	ok := slices.DeleteFunc(lat, func(d time.Duration) bool { return d < 0 })
	if len(ok) == 0 {
		return 0, 0, nfailed.Load(), errors.New("every call failed")
	}
	slices.Sort(ok)
	return ok[len(ok)/2], ok[len(ok)*99/100], nfailed.Load(), nil
}

// startProxies starts nginx and HAProxy on the app host's loopback, where
// a sidecar proxy would listen, and returns their pids.
func startProxies(w *meshlab.World, out string, h2, grpcAddrs []netip.AddrPort) (int, int, error) {
	dir := filepath.Join(w.Lab.Dir(), "h2proxies")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, 0, err
	}
	servers := func(addrs []netip.AddrPort, prefix string) string {
		var b strings.Builder
		for i, a := range addrs {
			fmt.Fprintf(&b, prefix, i, a)
		}
		return b.String()
	}
	nginx := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
user www-data www-data;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/nginx-body;
  proxy_temp_path %[1]s/nginx-proxy;
  fastcgi_temp_path %[1]s/nginx-fastcgi;
  uwsgi_temp_path %[1]s/nginx-uwsgi;
  scgi_temp_path %[1]s/nginx-scgi;
  keepalive_requests 1000000;
  upstream h2web {
%[2]s    keepalive 256;
  }
  upstream grpcs {
%[3]s    keepalive 256;
  }
  server {
    listen 127.0.0.1:%[4]d http2;
    location / { proxy_pass http://h2web; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:%[5]d http2;
    location / { grpc_pass grpc://grpcs; }
  }
}
`, dir, servers(h2, "    server %[2]s;\n"), servers(grpcAddrs, "    server %[2]s;\n"), nginxH2Port, nginxGRPCPort)
	haproxy := fmt.Sprintf(`global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend h2in
  bind 127.0.0.1:%[1]d proto h2
  use_backend grpcs if { req.hdr(content-type) -m beg application/grpc }
  default_backend h2web
backend h2web
  balance roundrobin
%[2]sbackend grpcs
  balance roundrobin
%[3]s`, haproxyH2Port, servers(h2, "  server s%[1]d %[2]s proto h2\n"), servers(grpcAddrs, "  server s%[1]d %[2]s proto h2\n"))
	nconf, hconf := filepath.Join(dir, "nginx.conf"), filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(nconf, []byte(nginx), 0o644); err != nil {
		return 0, 0, err
	}
	if err := os.WriteFile(hconf, []byte(haproxy), 0o644); err != nil {
		return 0, 0, err
	}
	os.WriteFile(filepath.Join(out, "nginx.conf"), []byte(nginx), 0o644)
	os.WriteFile(filepath.Join(out, "haproxy.cfg"), []byte(haproxy), 0o644)
	n, err := w.App.Start("nginx", nil, "nginx", "-c", nconf)
	if err != nil {
		return 0, 0, err
	}
	h, err := w.App.Start("haproxy", nil, "haproxy", "-f", hconf)
	if err != nil {
		return 0, 0, err
	}
	for _, port := range []int{nginxH2Port, nginxGRPCPort, haproxyH2Port} {
		err := meshlab.Poll(context.Background(), 10*time.Second, fmt.Sprintf("a proxy on port %d", port), func() error {
			c, err := w.App.DialContext(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			return 0, 0, fmt.Errorf("%w\nnginx: %s\nhaproxy: %s", err, n.Output(), h.Output())
		}
	}
	return n.Cmd.Process.Pid, h.Cmd.Process.Pid, nil
}
