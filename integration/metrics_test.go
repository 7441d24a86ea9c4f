package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// prometheusServer is a real Prometheus (Debian's package) running in a
// lab host, scraping targets every second.
type prometheusServer struct {
	host *netlab.Host
	proc *netlab.Proc
	http *http.Client
	base string
}

// startPrometheus runs Prometheus in a host of its own, storing in a
// temporary directory, scraping targets every second. It listens only on
// its lab address.
func startPrometheus(t *testing.T, w *meshlab.World, targets ...string) *prometheusServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus is not installed (make deps installs it)")
		}
		t.Skip("prometheus is not installed (make deps installs it)")
	}
	h, err := w.Lab.AddHost("prom")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: meshlet
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := net.JoinHostPort(h.IP.String(), "9090")
	p, err := h.Start("prometheus", nil, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen,
		"--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", meshlab.Tail(p.Output()))
		}
		p.Kill()
	})
	ps := &prometheusServer{host: h, proc: p, http: h.HTTPClient(5 * time.Second), base: "http://" + listen}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = meshlab.Poll(ctx, 30*time.Second, "prometheus to be ready", func() error {
		select {
		case <-p.Done():
			return meshlab.StopPolling(fmt.Errorf("prometheus exited: %s", meshlab.Tail(p.Output())))
		default:
		}
		resp, err := ps.http.Get(ps.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("ready: %d", resp.StatusCode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string
	Value  float64
}

// query runs an instant query through Prometheus's HTTP API. A query
// Prometheus refuses is an error.
func (p *prometheusServer) query(ctx context.Context, q string) ([]sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Status    string `json:"status"`
		Error     string `json:"error"`
		ErrorType string `json:"errorType"`
		Data      struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("query %q: %d %s", q, resp.StatusCode, b)
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s", q, out.ErrorType, out.Error)
	}
	if out.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", q, out.Data.ResultType)
	}
	var res []sample
	for _, r := range out.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v: %w", q, r.Value[1], err)
		}
		res = append(res, sample{Metric: r.Metric, Value: v})
	}
	return res, nil
}

// registerAlias registers a second service, api, served by an existing
// instance, with the same HTTP check.
func registerAlias(w *meshlab.World, name string, inst *meshlab.Instance) error {
	return w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: name + "-1", Name: name, Address: inst.Host.IP.String(), Port: 8080,
		Check: &api.AgentServiceCheck{CheckID: "check-" + name + "-1", HTTP: inst.URL("/health"), Interval: "1s", Timeout: "1s"},
	})
}

// A real Prometheus scrapes a sidecar under a bounded load: the request
// counters it reads through its query API match the requests sent, by
// service and status class; DNS queries match by kind; and every query of
// the Grafana dashboard is valid and returns data.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 2, Meshlet: []string{"--admin-listen", "0.0.0.0:15000"}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := registerAlias(w, "api", w.Instances[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitPassing(ctx, "web", 2); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitPassing(ctx, "api", 1); err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, w, net.JoinHostPort(w.App.IP.String(), "15000"))

	// DNS: 2 mesh answers, 3 unknown mesh names, 4 forwarded names (two
	// the resolver knows, two it answers NXDOMAIN: forwarded all the same).
	webVIP := resolveVIP(t, w, "web.local")
	apiVIP := resolveVIP(t, w, "api.local")
	for range 3 {
		if r := query(t, w, "nope.local", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
			t.Fatalf("nope.local: rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	for _, name := range []string{"a.example", "b.example", "unknown.org", "unknown.net"} {
		query(t, w, name, dns.TypeA, "udp")
	}

	// Requests: bounded, sent one after the other.
	web := w.NewAppClient(webVIP, "web.local", false)
	apiClient := w.NewAppClient(apiVIP, "api.local", false)
	want := map[string]int{} // "service class" → count
	send := func(c *meshlab.AppClient, service, path string, n, status int) {
		for range n {
			h := c.Get(ctx, path, "")
			if h.Status != status {
				t.Fatalf("GET %s %s: %d %s, want %d", service, path, h.Status, h.Error, status)
			}
		}
		want[fmt.Sprintf("%s %dxx", service, status/100)] += n
	}
	send(web, "web", "/", 40, 200)
	send(web, "web", "/status/404", 10, 404)
	send(web, "web", "/status/503", 5, 503)
	send(apiClient, "api", "/", 20, 200)
	send(apiClient, "api", "/status/302", 3, 302)

	// Raw TCP: a few connections of bytes that are not HTTP.
	for range 3 {
		err := w.App.Do(func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(webVIP.String(), "80"), 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("\x16\x03\x01 not http\r\n\r\n")); err != nil {
				return err
			}
			io.Copy(io.Discard, c) // the instance answers 400 and closes
			return nil
		})
		if err != nil {
			t.Fatalf("raw TCP: %v", err)
		}
	}

	// The counters, as Prometheus scraped them.
	err := meshlab.Poll(ctx, 20*time.Second, "prometheus to see every request", func() error {
		res, err := prom.query(ctx, `sum by (service, class) (meshlet_requests_total)`)
		if err != nil {
			return meshlab.StopPolling(err)
		}
		got := map[string]int{}
		for _, s := range res {
			if s.Value != 0 {
				got[s.Metric["service"]+" "+s.Metric["class"]] = int(s.Value)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("by service and class: got %v, want %v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	checks := []struct {
		query string
		want  float64
	}{
		{`sum(meshlet_dns_queries_total{kind="mesh"})`, 2},
		{`sum(meshlet_dns_queries_total{kind="nxdomain"})`, 3},
		{`sum(meshlet_dns_queries_total{kind="forwarded"})`, 4},
		{`sum(meshlet_dns_forward_failures_total)`, 0},
		{`sum(meshlet_instance_requests_total{service="web"})`, 55 + 3},
		{`sum(meshlet_instance_requests_total{service="api"})`, 23},
		{`sum(meshlet_tcp_connections_opened_total{service="web"})`, 3},
		{`sum(meshlet_tcp_connections_closed_total{service="web"})`, 3},
		{`meshlet_consul_fail_static`, 0},
		{`meshlet_consul_last_answer_age_seconds`, 0},
		{`sum(meshlet_request_duration_seconds_count{service="web"})`, 55},
	}
	err = meshlab.Poll(ctx, 10*time.Second, "the other counters", func() error {
		var bad []string
		for _, c := range checks {
			res, err := prom.query(ctx, c.query)
			if err != nil {
				return meshlab.StopPolling(err)
			}
			if len(res) != 1 || res[0].Value != c.want {
				bad = append(bad, fmt.Sprintf("%s = %v, want %v", c.query, res, c.want))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%s", strings.Join(bad, "; "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if res, err := prom.query(ctx, `sum(meshlet_tcp_bytes_total{service="web",direction="received"})`); err != nil || len(res) != 1 || res[0].Value < 100 {
		t.Errorf("raw TCP bytes received: %v %v, want the instance's 400 answers (over 100 bytes)", res, err)
	}

	// meshlet status, in the app's namespace, shows the same.
	out, err := w.App.Run(ctx, w.Bins.Meshlet, "status")
	if err != nil {
		t.Errorf("meshlet status: %v\n%s", err, out)
	}
	t.Logf("meshlet status:\n%s", out)
	for _, want := range []string{"service web  vip " + webVIP.String(), "service api  vip " + apiVIP.String(),
		"requests 55 (2xx 40, 4xx 10, 5xx 5)", "raw tcp: 3 connections, 0 open", w.Instances[0].Name, w.Instances[1].Name, "consul: answering"} {
		if !strings.Contains(out, want) {
			t.Errorf("meshlet status lacks %q:\n%s", want, out)
		}
	}

	// Every query of the dashboard, as Grafana would send it.
	exprs := dashboardQueries(t)
	err = meshlab.Poll(ctx, 15*time.Second, "every dashboard query to return data", func() error {
		var empty []string
		for _, e := range exprs {
			res, err := prom.query(ctx, e.expr)
			if err != nil {
				return meshlab.StopPolling(fmt.Errorf("panel %q: %w", e.panel, err))
			}
			if len(res) == 0 {
				empty = append(empty, fmt.Sprintf("panel %q: %s", e.panel, e.expr))
			}
		}
		if len(empty) > 0 {
			return fmt.Errorf("no data for %s", strings.Join(empty, "; "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

type dashboardQuery struct{ panel, expr string }

// dashboardQueries reads dashboards/meshlet.json and returns its queries
// with Grafana's variables replaced as Grafana does: every service, and a
// rate interval of a minute.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	root, err := meshlab.RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "dashboards", "meshlet.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("$service", ".+", "$__rate_interval", "1m")
	var out []dashboardQuery
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, dashboardQuery{p.Title, r.Replace(tg.Expr)})
		}
	}
	if len(out) == 0 {
		t.Fatal("no query in the dashboard")
	}
	return out
}
