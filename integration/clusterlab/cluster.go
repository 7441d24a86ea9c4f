// Package clusterlab builds Consul as production runs it, on a netlab
// network: three servers (Raft, -bootstrap-expect 3) in namespaces of
// their own, and a client agent on every app and instance host, which the
// host's programs reach at 127.0.0.1:8500 as a sidecar does in
// production. Optionally with ACLs (default deny) and HTTPS on the client
// agents. Close removes all of it.
package clusterlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// ManagementToken is the lab's ACL management token (initial_management),
// used by the test's own calls and as every client agent's agent token.
const ManagementToken = "8b1c4a36-5a0e-4c52-9d2c-3a4f9e0d6b11"

// Options shape a cluster.
type Options struct {
	ACL bool // ACLs on, default_policy deny
	TLS bool // client agents serve HTTPS on 8501 with the lab's own CA
	// ServerHCL and ClientHCL are more configuration for the servers and
	// the client agents (benchmarks lift limits, turn streaming off).
	ServerHCL, ClientHCL []string
}

// Cluster is a running Consul cluster and the hosts around it.
type Cluster struct {
	Bins    meshlab.Binaries
	Lab     *netlab.Lab
	Opts    Options
	Servers []*Server
	TLS     *TLSFiles // with Options.TLS

	DNSHost  *netlab.Host
	Resolver *meshlab.TestResolver
}

// Server is one Consul server.
type Server struct {
	Name string
	Host *netlab.Host
	Proc *netlab.Proc
	dir  string
	args []string
}

// Agent is a host with a Consul client agent, which its programs reach
// at 127.0.0.1:8500 (HTTPS 127.0.0.1:8501 with Options.TLS).
type Agent struct {
	c      *Cluster
	Host   *netlab.Host
	Proc   *netlab.Proc
	Consul *api.Client // the host's agent, as the test's own client (management token)
	Resolv string      // resolv.conf pointing at the lab's DNS host
}

// Start builds the servers and the DNS host, and waits for a leader. On
// error everything made so far is removed.
func Start(ctx context.Context, bins meshlab.Binaries, opts Options) (c *Cluster, err error) {
	lab, err := netlab.New(meshlab.Subnet)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Bins: bins, Lab: lab, Opts: opts}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	for i := 1; i <= 3; i++ {
		h, err := lab.AddHost(fmt.Sprintf("srv%d", i))
		if err != nil {
			return c, err
		}
		c.Servers = append(c.Servers, &Server{Name: h.Name, Host: h, dir: filepath.Join(lab.Dir(), h.Name)})
	}
	if opts.TLS {
		if c.TLS, err = makeTLS(filepath.Join(lab.Dir(), "tls")); err != nil {
			return c, err
		}
	}
	for _, s := range c.Servers {
		if err := c.startServer(s); err != nil {
			return c, err
		}
	}
	if c.DNSHost, err = lab.AddHost("dns"); err != nil {
		return c, err
	}
	if c.Resolver, err = meshlab.StartTestResolver(c.DNSHost); err != nil {
		return c, err
	}
	_, err = c.WaitLeader(ctx, 60*time.Second, "")
	return c, err
}

// common is every agent's configuration: short timings, so that the lab
// starts and heals fast.
func (c *Cluster) common(dir string) []string {
	hcl := []string{
		"disable_update_check = true",
		"performance { raft_multiplier = 1 }",
	}
	if c.Opts.ACL {
		hcl = append(hcl, fmt.Sprintf(`acl { enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens { initial_management = %q
    agent = %q } }`, ManagementToken, ManagementToken))
	}
	args := []string{c.Bins.Consul, "agent", "-data-dir", dir, "-log-level", "info",
		"-retry-interval", "1s"}
	for _, h := range hcl {
		args = append(args, "-hcl", h)
	}
	for _, s := range c.Servers {
		args = append(args, "-retry-join", s.Host.IP.String())
	}
	return args
}

func (c *Cluster) startServer(s *Server) error {
	if s.args == nil {
		s.args = append(c.common(s.dir), "-server", "-bootstrap-expect", "3", "-node", s.Name,
			"-bind", s.Host.IP.String(), "-client", "0.0.0.0")
		for _, h := range c.Opts.ServerHCL {
			s.args = append(s.args, "-hcl", h)
		}
	}
	var err error
	s.Proc, err = s.Host.Start("consul", []string{"CHECKPOINT_DISABLE=1"}, s.args...)
	return err
}

// Restart starts a killed server again, with its data.
func (c *Cluster) Restart(s *Server) error {
	s.Proc.Kill()
	return c.startServer(s)
}

// ServerClient is a client of server s's HTTP API, from the test, with
// the management token.
func (c *Cluster) ServerClient(s *Server) *api.Client {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = s.Host.IP.String() + ":8500"
	cfg.Scheme = "http"
	cfg.Transport.DialContext = s.Host.DialContext
	cfg.Transport.Proxy = nil
	cfg.Token = ManagementToken
	cfg.TLSConfig = api.TLSConfig{}
	client, _ := api.NewClient(cfg) // fails only on a bad TLS config, which this has none of
	return client
}

// WaitLeader waits until a server other than not (a server's Name, or "")
// is the Raft leader, as the live servers all see it, and returns it.
func (c *Cluster) WaitLeader(ctx context.Context, limit time.Duration, not string) (*Server, error) {
	var leader *Server
	err := meshlab.Poll(ctx, limit, "a consul leader", func() error {
		leader = nil
		for _, s := range c.Servers {
			select {
			case <-s.Proc.Done():
				if s.Name == not {
					continue
				}
				return meshlab.StopPolling(fmt.Errorf("consul server %s exited: %s", s.Name, meshlab.Tail(s.Proc.Output())))
			default:
			}
			addr, err := c.ServerClient(s).Status().Leader()
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			want := ""
			if leader != nil {
				want = leader.Host.IP.String() + ":8300"
			}
			switch {
			case addr == "":
				return fmt.Errorf("%s sees no leader", s.Name)
			case want != "" && addr != want:
				return fmt.Errorf("%s sees leader %s, another sees %s", s.Name, addr, want)
			}
			for _, l := range c.Servers {
				if l.Host.IP.String()+":8300" == addr {
					leader = l
				}
			}
		}
		if leader == nil || leader.Name == not {
			return errors.New("leader not yet elected")
		}
		return nil
	})
	return leader, err
}

// Leader returns the current Raft leader, as one live server sees it.
func (c *Cluster) Leader(ctx context.Context) (*Server, error) {
	return c.WaitLeader(ctx, 30*time.Second, "")
}

// AddAgentHost makes a host with a client agent and waits until the agent
// has joined and knows the leader.
func (c *Cluster) AddAgentHost(ctx context.Context, name string) (*Agent, error) {
	h, err := c.Lab.AddHost(name)
	if err != nil {
		return nil, err
	}
	a := &Agent{c: c, Host: h}
	if a.Resolv, err = h.WriteResolvConf(c.DNSHost.IP); err != nil {
		return nil, err
	}
	args := append(c.common(filepath.Join(c.Lab.Dir(), name+"-consul")), "-node", name,
		"-bind", h.IP.String(), "-client", "127.0.0.1")
	for _, h := range c.Opts.ClientHCL {
		args = append(args, "-hcl", h)
	}
	if c.TLS != nil {
		args = append(args, "-hcl", fmt.Sprintf(`ports { https = 8501 }
tls { https { ca_file = %q
  cert_file = %q
  key_file = %q } }`, c.TLS.CA, c.TLS.Cert, c.TLS.Key))
	}
	if a.Proc, err = h.Start("consul", []string{"CHECKPOINT_DISABLE=1"}, args...); err != nil {
		return nil, err
	}
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = "127.0.0.1:8500"
	cfg.Scheme = "http"
	cfg.TLSConfig = api.TLSConfig{}
	cfg.Transport.DialContext = h.DialContext
	cfg.Transport.Proxy = nil
	cfg.Token = ManagementToken
	if a.Consul, err = api.NewClient(cfg); err != nil {
		return nil, err
	}
	err = meshlab.Poll(ctx, 60*time.Second, name+"'s consul agent to join", func() error {
		select {
		case <-a.Proc.Done():
			return meshlab.StopPolling(fmt.Errorf("consul agent exited: %s", meshlab.Tail(a.Proc.Output())))
		default:
		}
		leader, err := a.Consul.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return errors.New("no leader known")
		}
		// The node is in the catalog once the agent has synced.
		node, _, err := a.Consul.Catalog().Node(name, nil)
		if err != nil {
			return err
		}
		if node == nil {
			return errors.New("node not in the catalog yet")
		}
		return nil
	})
	return a, err
}

// Instance is an instance of a service on its own agent host.
type Instance struct {
	Name  string // also its service ID
	Agent *Agent
	App   *netlab.Proc
}

// URL is the instance's direct URL for path.
func (i *Instance) URL(path string) string {
	return fmt.Sprintf("http://%s:8080%s", i.Agent.Host.IP, path)
}

// AddInstance starts a host with a client agent and a web instance,
// registered by its host's agent, with meta and an HTTP check every
// second.
func (c *Cluster) AddInstance(ctx context.Context, service, name string, meta map[string]string) (*Instance, error) {
	a, err := c.AddAgentHost(ctx, name)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Name: name, Agent: a}
	if inst.App, err = a.Host.Start("webinstance", nil, c.Bins.WebInstance, "-listen", ":8080", "-name", name); err != nil {
		return nil, err
	}
	reg := &api.AgentServiceRegistration{
		ID: name, Name: service, Address: a.Host.IP.String(), Port: 8080, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "check-" + name, HTTP: inst.URL("/health"), Interval: "1s", Timeout: "1s"},
	}
	if err := a.Consul.Agent().ServiceRegister(reg); err != nil {
		return nil, fmt.Errorf("registering %s: %w", name, err)
	}
	return inst, nil
}

// SetHealth makes the instance's /health answer 200 (true) or 503.
func (i *Instance) SetHealth(ctx context.Context, healthy bool) error {
	state := "fail"
	if healthy {
		state = "ok"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, i.URL("/admin/health?state="+state), nil)
	if err != nil {
		return err
	}
	resp, err := i.Agent.Host.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("setting %s's health: %s", i.Name, resp.Status)
	}
	return nil
}

// Passing returns the IDs of service's passing instances, as server s's
// leader-consistent view has them.
func (c *Cluster) Passing(ctx context.Context, service string) ([]string, error) {
	for _, s := range c.Servers {
		select {
		case <-s.Proc.Done():
			continue
		default:
		}
		entries, _, err := c.ServerClient(s).Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		var ids []string
		for _, e := range entries {
			ids = append(ids, e.Service.ID)
		}
		return ids, nil
	}
	return nil, errors.New("no consul server runs")
}

// WaitPassing waits until service has exactly the passing instances ids.
func (c *Cluster) WaitPassing(ctx context.Context, service string, limit time.Duration, ids ...string) error {
	want := strings.Join(ids, ",")
	return meshlab.Poll(ctx, limit, fmt.Sprintf("passing instances %s of %s", want, service), func() error {
		got, err := c.Passing(ctx, service)
		if err != nil {
			return err
		}
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(ids))) {
			return fmt.Errorf("passing: %v", got)
		}
		return nil
	})
}

// Close stops every process and removes every namespace and file.
func (c *Cluster) Close() error {
	if c == nil || c.Lab == nil {
		return nil
	}
	return c.Lab.Close()
}

// Logs returns the tails of every Consul process's log, for failures.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, s := range c.Servers {
		if s.Proc != nil {
			fmt.Fprintf(&b, "--- %s:\n%s\n", s.Name, meshlab.Tail(s.Proc.Output()))
		}
	}
	return b.String()
}
