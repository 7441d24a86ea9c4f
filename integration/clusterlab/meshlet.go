package clusterlab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// StartMeshlet starts `meshlet run` on the agent's host, pointed at the
// host's client agent through the standard CONSUL_HTTP_ADDR (set in env
// to change it) and at the lab's DNS host, with extra arguments.
func (a *Agent) StartMeshlet(env []string, extra ...string) (*netlab.Proc, error) {
	argv := append([]string{a.c.Bins.Meshlet, "run",
		"--resolv-conf", a.Resolv,
		"--state-dir", filepath.Join(a.c.Lab.Dir(), "state-"+a.Host.Name),
		"--log-level", "debug",
	}, extra...)
	env = append([]string{"HOSTNAME=" + a.Host.Name, "CONSUL_HTTP_ADDR=127.0.0.1:8500"}, env...)
	return a.Host.Start("meshlet", env, argv...)
}

// AdminGet fetches a path from the host's meshlet admin server.
func (a *Agent) AdminGet(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := a.Host.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WaitReady waits for the host's meshlet /readyz to answer 200.
func (a *Agent) WaitReady(ctx context.Context, m *netlab.Proc, limit time.Duration) error {
	return meshlab.Poll(ctx, limit, a.Host.Name+"'s meshlet to be ready", func() error {
		select {
		case <-m.Done():
			return meshlab.StopPolling(fmt.Errorf("meshlet exited: %s", meshlab.Tail(m.Output())))
		default:
		}
		code, body, err := a.AdminGet(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
}

// ResolveVIP asks the app's resolver (which meshlet intercepts) for name's
// A record, as the app would.
func (a *Agent) ResolveVIP(name string) (netip.Addr, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var resp *dns.Msg
	err := a.Host.Do(func() error {
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		var err error
		resp, _, err = c.Exchange(m, a.c.DNSHost.IP.String()+":53")
		return err
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolving %s: %w", name, err)
	}
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		return netip.Addr{}, fmt.Errorf("resolving %s: rcode %s, %d answers", name, dns.RcodeToString[resp.Rcode], len(resp.Answer))
	}
	rr, ok := resp.Answer[0].(*dns.A)
	if !ok {
		return netip.Addr{}, fmt.Errorf("resolving %s: %v is not an A record", name, resp.Answer[0])
	}
	addr, _ := netip.AddrFromSlice(rr.A.To4())
	return addr, nil
}

// AppClient is a client in the host's namespace that sends requests for
// host to vip, a new connection each, as the app would.
func (a *Agent) AppClient(vip netip.Addr, host string) *meshlab.AppClient {
	return &meshlab.AppClient{HTTP: a.Host.HTTPClient(10 * time.Second), VIP: vip, Host: host}
}

// Partition cuts the host off from every Consul server (both ways), with
// rules in the host's own namespace: its client agent, and so its
// meshlet, lose Consul, while the host still reaches the instances.
// Heal removes the rules.
func (a *Agent) Partition(ctx context.Context) error { return a.partition(ctx, "-I") }

// Heal undoes Partition.
func (a *Agent) Heal(ctx context.Context) error { return a.partition(ctx, "-D") }

func (a *Agent) partition(ctx context.Context, op string) error {
	for _, s := range a.c.Servers {
		ip := s.Host.IP.String()
		for _, rule := range [][]string{{op, "INPUT", "-s", ip, "-j", "DROP"}, {op, "OUTPUT", "-d", ip, "-j", "DROP"}} {
			if _, err := a.Host.Run(ctx, "iptables", append([]string{"-w"}, rule...)...); err != nil {
				return err
			}
		}
	}
	return nil
}
