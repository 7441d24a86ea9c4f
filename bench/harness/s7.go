package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// S7: the mTLS hop between sidecars (issue 18). meshlet on the app host
// presents the identity "web-client" (MESHLET_MTLS_IDENTITY) and reaches
// the first instance's app through a Connect sidecar on its host:
//
//   - meshlet plaintext: the same instance registered as "pweb": the
//     path without the hop;
//   - meshlet plaintext via terminator: "tweb", the terminating HAProxy's
//     plaintext port: the same hop without TLS;
//   - s7-mtls: "mweb", whose sidecar registration points at a
//     TLS-terminating HAProxy on the instance's host (bind ... ssl crt
//     <mweb's Consul leaf> ca-file <Consul's roots> verify required);
//   - s7-consul: "cweb", behind `consul connect proxy -sidecar-for`;
//   - s7-haproxy: HAProxy on the app host doing the same mTLS hop
//     (server ... ssl crt <web-client's leaf> ca-file ... verify
//     required) to the same terminating HAProxy.
//
// The client sides (meshlet, HAProxy) are compared on the same server
// side; their CPU is what "CPU per request" counts. A churn run makes
// every request a new instance connection (the terminator closes it after
// each answer, as "mchurn"), so that its rate is a rate of handshakes,
// which resume: the terminator's counters give the resumption rate.

const (
	s7TermPort      = 21443 // the terminating HAProxy, on the instance's host
	s7TermChurnPort = 21444 // the same, closing every connection after its answer
	s7TermPlainPort = 21080 // the same HAProxy, plaintext: the hop without TLS
	s7ConsulPort    = 21000 // consul connect proxy -sidecar-for cweb-1
	s7HAProxyPort   = 18097 // the client HAProxy, on the app's loopback
	s7HAProxyChurn  = 18098
)

// S7Row is one target of S7: throughput at 16 keep-alive connections,
// latency at a constant rate, or a churn run.
type S7Row struct {
	Run    string // "throughput", "latency", "churn"
	Target string
	RPS    []float64
	CPU10k []float64 // of the client-side proxy
	P50    []float64 // µs, latency runs
	P99    []float64
	Reuse  []float64 // churn: % of the terminator's handshakes that resumed a session
	Errors int
}

func (r *Report) s7(run, target string) *S7Row {
	if row := r.s7find(run, target); row != nil {
		return row
	}
	r.S7 = append(r.S7, S7Row{Run: run, Target: target})
	return &r.S7[len(r.S7)-1]
}

// s7Lab is what S7 adds to the lab.
type s7Lab struct {
	inst                 *netlab.Host
	term, client, consul *netlab.Proc
	termSock             string // the terminator's stats socket
}

func runS7(ctx context.Context, l *lab, rep *Report) error {
	s, err := l.startS7(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Back to the meshlet the other scenarios measure.
		l.cfg.MeshletEnv = slices.DeleteFunc(l.cfg.MeshletEnv, func(e string) bool { return strings.HasPrefix(e, "MESHLET_MTLS_IDENTITY=") })
		l.restartMeshlet(context.WithoutCancel(ctx), false)
	}()
	vips := map[string]netip.Addr{}
	for _, svc := range []string{"pweb", "tweb", "mweb", "cweb", "mchurn"} {
		if vips[svc], err = l.resolve(ctx, svc+".local"); err != nil {
			return fmt.Errorf("resolving %s.local: %w", svc, err)
		}
	}
	if err := l.waitSidecars(ctx); err != nil {
		return err
	}
	meshletVia := func(name, svc string) httpTarget {
		t := l.meshletTarget("/payload")
		t.name, t.url, t.host = name, fmt.Sprintf("http://%s/payload", vips[svc]), svc+".local"
		return t
	}
	haproxyVia := func(name string, port int) httpTarget {
		pid := func() int { return s.client.Cmd.Process.Pid }
		return httpTarget{name: name, url: fmt.Sprintf("http://127.0.0.1:%d/payload", port),
			cpu: func() time.Duration { return treeCPU(pid()) }, pid: pid}
	}
	direct := httpTarget{name: "direct", url: fmt.Sprintf("http://%s/payload", netip.AddrPortFrom(s.inst.IP, 8080))}
	targets := []httpTarget{direct, meshletVia("meshlet plaintext", "pweb"), meshletVia("meshlet plaintext via terminator", "tweb"), meshletVia("meshlet mTLS", "mweb"),
		meshletVia("meshlet mTLS to consul proxy", "cweb"), haproxyVia("haproxy mTLS", s7HAProxyPort)}
	churn := []httpTarget{meshletVia("meshlet mTLS", "mchurn"), haproxyVia("haproxy mTLS", s7HAProxyChurn)}
	cfg := l.cfg
	for r := range cfg.rounds() {
		for _, t := range targets {
			before, err := s.termCounters("mweb")
			if err != nil {
				return err
			}
			res, cpu10k, err := l.s7wrk(ctx, t)
			if err != nil {
				return err
			}
			after, err := s.termCounters("mweb")
			if err != nil {
				return err
			}
			l.log("S7 round %d throughput %-30s %8.0f req/s  %.3f CPU-s/10k  %d errors  (terminator: %d full, %d resumed handshakes)", r, t.name, res.rps, cpu10k, res.errors,
				after.full-before.full, after.resumed-before.resumed)
			if cfg.measured(r) {
				row := rep.s7("throughput", t.name)
				row.RPS = append(row.RPS, res.rps)
				if t.cpu != nil {
					row.CPU10k = append(row.CPU10k, cpu10k)
				}
				row.Errors += res.errors
			}
		}
		for _, t := range targets {
			res, err := l.load(ctx, loadRun{url: t.url, host: t.host, rate: 1000, conns: 16, duration: cfg.S2Duration})
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			l.log("S7 round %d 1000/s %-30s p50 %6.0f p99 %6.0f µs  failed %d", r, t.name, res.P50us, res.P99us, res.Failed())
			if cfg.measured(r) {
				row := rep.s7("latency", t.name)
				row.P50, row.P99 = append(row.P50, res.P50us), append(row.P99, res.P99us)
				row.Errors += res.Failed()
			}
		}
		for _, t := range churn {
			before, err := s.termCounters("mchurn")
			if err != nil {
				return err
			}
			res, cpu10k, err := l.s7wrk(ctx, t)
			if err != nil {
				return err
			}
			after, err := s.termCounters("mchurn")
			if err != nil {
				return err
			}
			reuse := 0.0
			if n := after.full + after.resumed - before.full - before.resumed; n > 0 {
				reuse = 100 * float64(after.resumed-before.resumed) / float64(n)
			}
			l.log("S7 round %d churn %-30s %8.0f req/s (= handshakes/s)  %.3f CPU-s/10k  %.1f%% resumed  %d errors",
				r, t.name, res.rps, cpu10k, reuse, res.errors)
			if cfg.measured(r) {
				row := rep.s7("churn", t.name)
				row.RPS, row.CPU10k, row.Reuse = append(row.RPS, res.rps), append(row.CPU10k, cpu10k), append(row.Reuse, reuse)
				row.Errors += res.errors
			}
		}
	}
	return nil
}

// s7wrk is one wrk run at 16 keep-alive connections, with the CPU the
// target's proxy used per 10k requests.
func (l *lab) s7wrk(ctx context.Context, t httpTarget) (wrkResult, float64, error) {
	var before time.Duration
	if t.cpu != nil {
		before = t.cpu()
	}
	res, err := l.wrk(ctx, 16, l.cfg.S1Duration, t)
	if err != nil {
		return res, 0, fmt.Errorf("%s: %w", t.name, err)
	}
	cpu10k := 0.0
	if t.cpu != nil && res.requests > 0 {
		cpu10k = (t.cpu() - before).Seconds() / float64(res.requests) * 10000
	}
	return res, cpu10k, nil
}

// startS7 writes the Consul leaves and roots where HAProxy reads them,
// registers S7's services, starts the terminating HAProxy, Consul's proxy
// and the client HAProxy, and restarts meshlet with the web-client
// identity.
func (l *lab) startS7(ctx context.Context) (*s7Lab, error) {
	s := &s7Lab{inst: l.w.Instances[0].Host, termSock: filepath.Join(l.dir, "s7-term.sock")}
	agent := l.w.Consul.Agent()
	roots, _, err := agent.ConnectCARoots(nil)
	if err != nil {
		return nil, fmt.Errorf("asking consul for its CA roots: %w", err)
	}
	var ca strings.Builder
	for _, r := range roots.Roots {
		ca.WriteString(r.RootCertPEM)
		ca.WriteString("\n")
	}
	files := map[string]string{"s7-ca.pem": ca.String()}
	for file, svc := range map[string]string{"s7-term.pem": "mweb", "s7-churn.pem": "mchurn", "s7-client.pem": "web-client"} {
		leaf, _, err := agent.ConnectCALeaf(svc, nil)
		if err != nil {
			return nil, fmt.Errorf("asking consul for the leaf of %s: %w", svc, err)
		}
		files[file] = leaf.CertPEM + "\n" + leaf.PrivateKeyPEM
	}
	for name, content := range files {
		if _, err := writeFile(l.dir, name, content); err != nil {
			return nil, err
		}
	}
	ip := s.inst.IP.String()
	regs := []*api.AgentServiceRegistration{
		{ID: "pweb-1", Name: "pweb", Address: ip, Port: 8080},
		{ID: "tweb-1", Name: "tweb", Address: ip, Port: s7TermPlainPort},
		{ID: "mweb-1", Name: "mweb", Address: ip, Port: 8080},
		{Kind: api.ServiceKindConnectProxy, ID: "mweb-1-sidecar-proxy", Name: "mweb-sidecar-proxy", Address: ip, Port: s7TermPort,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "mweb", DestinationServiceID: "mweb-1"}},
		{ID: "mchurn-1", Name: "mchurn", Address: ip, Port: 8080},
		{Kind: api.ServiceKindConnectProxy, ID: "mchurn-1-sidecar-proxy", Name: "mchurn-sidecar-proxy", Address: ip, Port: s7TermChurnPort,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "mchurn", DestinationServiceID: "mchurn-1"}},
		{ID: "cweb-1", Name: "cweb", Address: ip, Port: 8080, Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{
			Port:   s7ConsulPort,
			Proxy:  &api.AgentServiceConnectProxyConfig{LocalServiceAddress: "127.0.0.1", LocalServicePort: 8080},
			Checks: api.AgentServiceChecks{{Name: "listening", TCP: fmt.Sprintf("%s:%d", ip, s7ConsulPort), Interval: "30s", Status: api.HealthPassing}},
		}}},
	}
	for _, reg := range regs {
		if err := agent.ServiceRegister(reg); err != nil {
			return nil, fmt.Errorf("registering %s: %w", reg.ID, err)
		}
	}
	conf, err := writeFile(l.dir, "s7-term.cfg", s7TermConfig(l.dir, s.termSock))
	if err != nil {
		return nil, err
	}
	if s.term, err = s.inst.Start("haproxy-term", nil, pinned(l.serverCPU, "haproxy", "-db", "-f", conf)...); err != nil {
		return nil, err
	}
	if conf, err = writeFile(l.dir, "s7-client.cfg", s7ClientConfig(l.dir, s.inst.IP)); err != nil {
		return nil, err
	}
	if s.client, err = l.w.App.Start("haproxy-client", nil, pinned(l.serverCPU, "haproxy", "-db", "-f", conf)...); err != nil {
		return nil, err
	}
	if s.consul, err = s.inst.Start("consul-proxy", []string{"CONSUL_HTTP_ADDR=" + l.w.ConsulAddr()},
		pinned(l.serverCPU, l.bins.Consul, "connect", "proxy", "-sidecar-for", "cweb-1")...); err != nil {
		return nil, err
	}
	l.cfg.MeshletEnv = append(slices.Clone(l.cfg.MeshletEnv), "MESHLET_MTLS_IDENTITY=web-client")
	if err := l.restartMeshlet(ctx, false); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		proc *netlab.Proc
		url  string
	}{
		{s.client, fmt.Sprintf("http://127.0.0.1:%d/payload", s7HAProxyPort)},
		{s.client, fmt.Sprintf("http://127.0.0.1:%d/payload", s7HAProxyChurn)},
	} {
		if err := meshlab.Poll(ctx, 15*time.Second, "the client HAProxy through the terminator", func() error {
			for _, q := range []*netlab.Proc{s.term, s.client, s.consul} {
				select {
				case <-q.Done():
					return meshlab.StopPolling(fmt.Errorf("%s exited: %s", q.Name, meshlab.Tail(q.Output())))
				default:
				}
			}
			resp, err := l.w.App.HTTPClient(2 * time.Second).Get(p.url)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// waitSidecars waits until meshlet routes mweb, mchurn and cweb to their
// sidecars, and pweb to the instance itself.
func (l *lab) waitSidecars(ctx context.Context) error {
	want := map[string]string{"pweb": ":8080", "tweb": fmt.Sprintf(":%d", s7TermPlainPort), "mweb": fmt.Sprintf(":%d", s7TermPort),
		"mchurn": fmt.Sprintf(":%d", s7TermChurnPort), "cweb": fmt.Sprintf(":%d", s7ConsulPort)}
	return meshlab.Poll(ctx, 30*time.Second, "meshlet to route S7's services to their sidecars", func() error {
		_, body, err := l.w.AdminGet(ctx, "/v1/state")
		if err != nil {
			return err
		}
		for svc, port := range want {
			if !strings.Contains(body, fmt.Sprintf(`"%s-1 `, svc)) || !strings.Contains(body, port+`"`) {
				return fmt.Errorf("%s not at %s yet", svc, port)
			}
		}
		return nil
	})
}

// s7Counters are a frontend's TLS handshakes: full ones and resumed ones.
type s7Counters struct{ full, resumed int }

// termCounters reads a frontend's handshake counters from the
// terminator's stats socket ("show stat": ssl_sess counts full
// handshakes, ssl_reused_sess resumed ones).
func (s *s7Lab) termCounters(frontend string) (s7Counters, error) {
	c, err := net.DialTimeout("unix", s.termSock, 2*time.Second)
	if err != nil {
		return s7Counters{}, fmt.Errorf("terminator stats: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return s7Counters{}, err
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var header []string
	for sc.Scan() {
		fields := strings.Split(strings.TrimPrefix(sc.Text(), "# "), ",")
		if header == nil {
			header = fields
			continue
		}
		row := map[string]string{}
		for i, h := range header {
			if i < len(fields) {
				row[h] = fields[i]
			}
		}
		if row["pxname"] == frontend && row["svname"] == "FRONTEND" {
			full, err1 := strconv.Atoi(row["ssl_sess"])
			resumed, err2 := strconv.Atoi(row["ssl_reused_sess"])
			if err1 != nil || err2 != nil {
				return s7Counters{}, fmt.Errorf("terminator stats: no ssl_sess/ssl_reused_sess in %q", sc.Text())
			}
			return s7Counters{full: full, resumed: resumed}, nil
		}
	}
	if err := sc.Err(); err != nil {
		return s7Counters{}, err
	}
	return s7Counters{}, fmt.Errorf("terminator stats: no %s frontend", frontend)
}

// s7TermConfig terminates mTLS on the instance's host as a Connect
// sidecar would: Consul's leaf of the service, Consul's roots, a client
// certificate required; one thread, keep-alive to the app.
func s7TermConfig(dir, sock string) string {
	return fmt.Sprintf(`# written by the meshlet benchmark harness (S7)
global
  nbthread 1
  maxconn 8000
  stats socket %[1]s mode 600 level admin
  tune.ssl.cachesize 20000
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 60s
frontend mweb
  bind :%[3]d ssl crt %[2]s/s7-term.pem ca-file %[2]s/s7-ca.pem verify required
  option http-keep-alive
  default_backend app
frontend mchurn
  bind :%[4]d ssl crt %[2]s/s7-churn.pem ca-file %[2]s/s7-ca.pem verify required
  option httpclose
  default_backend app
frontend plain
  bind :%[5]d
  option http-keep-alive
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:8080
`, sock, dir, s7TermPort, s7TermChurnPort, s7TermPlainPort)
}

// s7ClientConfig is HAProxy as the app's sidecar doing the mTLS hop with
// web-client's leaf, checking the server against Consul's roots.
func s7ClientConfig(dir string, inst netip.Addr) string {
	return fmt.Sprintf(`# written by the meshlet benchmark harness (S7)
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 60s
frontend keepalive
  bind 127.0.0.1:%[3]d
  option http-keep-alive
  option forwardfor
  default_backend mtls
frontend churn
  bind 127.0.0.1:%[4]d
  option http-keep-alive
  option forwardfor
  default_backend mtls_churn
backend mtls
  http-reuse always
  server web-1 %[2]s:%[5]d ssl crt %[1]s/s7-client.pem ca-file %[1]s/s7-ca.pem verify required
backend mtls_churn
  http-reuse always
  server web-1 %[2]s:%[6]d ssl crt %[1]s/s7-client.pem ca-file %[1]s/s7-ca.pem verify required
`, dir, inst, s7HAProxyPort, s7HAProxyChurn, s7TermPort, s7TermChurnPort)
}

// printS7 writes S7's tables.
func (r *Report) printS7(w io.Writer) {
	if len(r.S7) == 0 {
		return
	}
	c := r.Config
	fmt.Fprintf(w, "## S7 the mTLS hop between sidecars (app → client sidecar → mTLS → terminating sidecar → instance), one instance\n\n")
	fmt.Fprintf(w, "Throughput: wrk -t1 -c16 keep-alive, %v per run; CPU is the client-side proxy's.\n\n", c.S1Duration)
	fmt.Fprintln(w, "| target | req/s | CPU-s per 10k req | errors | req/s vs meshlet plaintext | vs meshlet plaintext via terminator |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	plain, viaTerm := r.s7find("throughput", "meshlet plaintext"), r.s7find("throughput", "meshlet plaintext via terminator")
	for _, row := range r.S7 {
		if row.Run != "throughput" {
			continue
		}
		cpu, vs, vsTerm := "–", "–", "–"
		if len(row.CPU10k) > 0 {
			cpu = fmt.Sprintf("%.3f", median(row.CPU10k))
		}
		if plain != nil && row.Target != "direct" {
			vs = ratio(median(row.RPS), median(plain.RPS))
		}
		if viaTerm != nil && row.Target != "direct" {
			vsTerm = ratio(median(row.RPS), median(viaTerm.RPS))
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %d | %s | %s |\n", row.Target, median(row.RPS), cpu, row.Errors, vs, vsTerm)
	}
	fmt.Fprintf(w, "\nLatency at 1000 req/s over 16 connections, %v per run, µs (added = minus direct):\n\n", c.S2Duration)
	fmt.Fprintln(w, "| target | p50 | p99 | added p50 | added p99 | failed |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	d := r.s7find("latency", "direct")
	for _, row := range r.S7 {
		if row.Run != "latency" {
			continue
		}
		a50, a99 := "–", "–"
		if d != nil && row.Target != "direct" {
			a50, a99 = fmt.Sprintf("%+.0f", median(row.P50)-median(d.P50)), fmt.Sprintf("%+.0f", median(row.P99)-median(d.P99))
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %s | %s | %d |\n", row.Target, median(row.P50), median(row.P99), a50, a99, row.Errors)
	}
	fmt.Fprintf(w, "\nChurn: the terminator closes every connection after its answer, so each request makes a new TLS connection (wrk -c16, %v per run):\n\n", c.S1Duration)
	fmt.Fprintln(w, "| client | handshakes/s (= req/s) | CPU-s per 10k req | resumed | errors |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: |")
	for _, row := range r.S7 {
		if row.Run == "churn" {
			fmt.Fprintf(w, "| %s | %.0f | %.3f | %.1f %% | %d |\n", row.Target, median(row.RPS), median(row.CPU10k), median(row.Reuse), row.Errors)
		}
	}
	fmt.Fprintln(w)
}

// s7find returns the row of run and target, or nil.
func (r *Report) s7find(run, target string) *S7Row {
	for i := range r.S7 {
		if r.S7[i].Run == run && r.S7[i].Target == target {
			return &r.S7[i]
		}
	}
	return nil
}
