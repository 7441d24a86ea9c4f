package meshlab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/netlab"
)

// Sidecar is an instance host laid out as a user's compose file lays it
// out: the app (webinstance on :8080, registered by nobody) and `meshlet
// run` beside it in the same network namespace, registering the app from
// SERVICE_* variables:
//
//	app:     image: webinstance
//	meshlet: network_mode: service:app
//	         environment: {SERVICE_NAME: web, SERVICE_CHECK_HTTP: /health, HOSTNAME: <name>}
type Sidecar struct {
	w       *World
	Name    string
	Host    *netlab.Host
	App     *netlab.Proc // the app; Kill it to take the app away
	Meshlet *netlab.Proc
	Resolv  string   // the host's resolv.conf (the lab's DNS host)
	Env     []string // SERVICE_* and other variables of the sidecar
	Args    []string // extra arguments of `meshlet run`
}

// AddSidecarHost starts a host named name with the app, then its sidecar
// with env and extra arguments. HOSTNAME is set to name, as Docker sets it
// to the container's, so that default service IDs differ between hosts.
// It does not wait for readiness or registration.
func (w *World) AddSidecarHost(name string, env []string, args ...string) (*Sidecar, error) {
	h, err := w.Lab.AddHost(name)
	if err != nil {
		return nil, err
	}
	s := &Sidecar{w: w, Name: name, Host: h, Env: env, Args: args}
	if s.Resolv, err = h.WriteResolvConf(w.DNSHost.IP); err != nil {
		return nil, err
	}
	if s.App, err = h.Start("webinstance", nil, w.Bins.WebInstance, "-listen", ":8080", "-name", name); err != nil {
		return nil, err
	}
	return s, s.StartMeshlet()
}

// StartMeshlet starts (or starts again, after it exited) the sidecar.
func (s *Sidecar) StartMeshlet() error {
	argv := append([]string{s.w.Bins.Meshlet, "run",
		"--consul", s.w.ConsulAddr(),
		"--resolv-conf", s.Resolv,
		"--state-dir", filepath.Join(s.w.Lab.Dir(), "state-"+s.Name),
		"--log-level", "debug",
	}, s.Args...)
	env := append([]string{"HOSTNAME=" + s.Name}, s.Env...)
	var err error
	s.Meshlet, err = s.Host.Start("meshlet", env, argv...)
	return err
}

// URL is the app's direct URL for path.
func (s *Sidecar) URL(path string) string { return fmt.Sprintf("http://%s:8080%s", s.Host.IP, path) }

// SetAppHealth makes the app's /health answer 200 (true) or 503 (false).
func (s *Sidecar) SetAppHealth(ctx context.Context, healthy bool) error {
	state := "fail"
	if healthy {
		state = "ok"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL("/admin/health?state="+state), nil)
	if err != nil {
		return err
	}
	resp, err := s.Host.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("setting %s's health: %s", s.Name, resp.Status)
	}
	return nil
}

// AdminGet fetches a path from the sidecar's admin server.
func (s *Sidecar) AdminGet(ctx context.Context, path string) (int, string, error) {
	return adminGet(ctx, s.Host, path)
}

// WaitReady waits for the sidecar's /readyz.
func (s *Sidecar) WaitReady(ctx context.Context) error {
	return Poll(ctx, 30*time.Second, s.Name+"'s meshlet to be ready", func() error {
		select {
		case <-s.Meshlet.Done():
			return StopPolling(fmt.Errorf("meshlet exited: %s", Tail(s.Meshlet.Output())))
		default:
		}
		code, body, err := s.AdminGet(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
}

func adminGet(ctx context.Context, h *netlab.Host, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := h.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Registration is what Consul's catalog shows of one service instance.
type Registration struct {
	ID, Address string
	Port        int
	Tags        []string
	Meta        map[string]string
	Status      string // the aggregated health of its checks
	Output      string // of its checks, joined
}

// Registrations returns every instance of service in Consul's health view,
// passing or not, by service ID.
func (w *World) Registrations(ctx context.Context, service string) (map[string]Registration, error) {
	entries, _, err := w.Consul.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("asking consul for %s: %w", service, err)
	}
	out := map[string]Registration{}
	for _, e := range entries {
		var outputs []string
		for _, c := range e.Checks {
			if c.ServiceID == e.Service.ID {
				outputs = append(outputs, c.Output)
			}
		}
		out[e.Service.ID] = Registration{
			ID: e.Service.ID, Address: e.Service.Address, Port: e.Service.Port,
			Tags: e.Service.Tags, Meta: e.Service.Meta,
			Status: e.Checks.AggregatedStatus(), Output: strings.Join(outputs, "; "),
		}
	}
	return out, nil
}

// WaitRegistration waits up to limit until cond holds for the instances
// of service, and returns them.
func (w *World) WaitRegistration(ctx context.Context, service string, limit time.Duration, what string, cond func(map[string]Registration) error) (map[string]Registration, error) {
	var regs map[string]Registration
	err := Poll(ctx, limit, what, func() error {
		var err error
		if regs, err = w.Registrations(ctx, service); err != nil {
			return err
		}
		return cond(regs)
	})
	return regs, err
}
