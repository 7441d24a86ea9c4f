package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/backoff"
)

// Consul is the part of Consul's agent API a Registrar uses; *api.Agent
// has it. The registration goes to the agent meshlet talks to, whose
// anti-entropy carries it to the catalog.
type Consul interface {
	ServiceRegisterOpts(reg *api.AgentServiceRegistration, opts api.ServiceRegisterOpts) error
	UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error
	ServiceDeregisterOpts(serviceID string, q *api.QueryOptions) error
}

// Config is what a Registrar needs.
type Config struct {
	Consul   Consul    // required
	Services []Service // from Parse; at least one
	Address  netip.Addr

	// ExcludePorts are meshlet's own listener ports, never taken for the
	// app's when its port is discovered.
	ExcludePorts []uint16
	Logger       *slog.Logger // nil discards

	// Backoff returns how long to wait before the next attempt to reach
	// Consul after attempt consecutive failures. Nil: full jitter between
	// 0 and 500ms·2^(attempt-1), at most 10s, so that sidecars that lost
	// Consul together do not come back in lockstep.
	Backoff func(attempt int) time.Duration
	// CallTimeout bounds each call to Consul. Default 5s.
	CallTimeout time.Duration
	// Listening lists the namespace's TCP listeners for port discovery.
	// Nil: ListeningSockets.
	Listening func() ([]netip.AddrPort, error)
	// DiscoverEvery is how often the app's listeners are looked at while
	// its port is unknown. Default 500ms.
	DiscoverEvery time.Duration

	// Sidecar, when set, gives the first service a Connect sidecar (see
	// SidecarRegistration), so that Consul and its tools see meshlet's
	// inbound listener as the app's proxy. It is called once that
	// service's port is known, before its first registration, to start
	// the listener; it returns the listener's port. An error is logged
	// and leaves the service registered without a sidecar.
	Sidecar func(ctx context.Context, svc Service) (port int, err error)
}

// Registrar keeps the app's services registered in Consul with the state
// of the app's probe. Run does the work; MarkCritical and Deregister are
// the two steps of a graceful stop.
type Registrar struct {
	cfg   Config
	log   *slog.Logger
	units []*unit
}

// New checks cfg and returns a Registrar; nothing happens until Run.
func New(cfg Config) (*Registrar, error) {
	if cfg.Consul == nil {
		return nil, errors.New("registration: a Consul client is required")
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("registration: no service to register")
	}
	if !cfg.Address.IsValid() {
		return nil, errors.New("registration: no address to register")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff == nil {
		cfg.Backoff = backoff.FullJitter(500*time.Millisecond, 10*time.Second)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	if cfg.Listening == nil {
		cfg.Listening = ListeningSockets
	}
	if cfg.DiscoverEvery <= 0 {
		cfg.DiscoverEvery = 500 * time.Millisecond
	}
	r := &Registrar{cfg: cfg, log: cfg.Logger}
	for i, s := range cfg.Services {
		u := newUnit(r, s)
		u.wantSidecar = i == 0 && cfg.Sidecar != nil
		r.units = append(r.units, u)
	}
	return r, nil
}

// Run registers every service, probes the app and keeps Consul told, until
// ctx ends. Failures to reach Consul are retried with backoff, never
// returned: the app's own traffic does not depend on them.
func (r *Registrar) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range r.units {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u.run(ctx)
		}()
	}
	wg.Wait()
}

// MarkCritical turns every registered service's check critical with
// reason, so that callers stop choosing the app, and keeps it so: Run
// reports no probe result afterwards. A service registered later is
// registered critical.
func (r *Registrar) MarkCritical(ctx context.Context, reason string) error {
	var errs []error
	for _, u := range r.units {
		if err := u.markCritical(ctx, reason); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Deregister removes every service that was registered and stops Run from
// registering them again. Call it after Run has returned, or at least
// after MarkCritical.
func (r *Registrar) Deregister(ctx context.Context) error {
	var errs []error
	for _, u := range r.units {
		if err := u.deregister(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Registered reports whether any service has ever been registered, so
// that a stop knows whether callers may have something to stop choosing.
func (r *Registrar) Registered() bool {
	for _, u := range r.units {
		if u.everRegistered.Load() {
			return true
		}
	}
	return false
}

// State is what /v1/state shows of one service.
type State struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Address    string `json:"address"`
	Port       int    `json:"port"`
	Probe      string `json:"probe"`
	Status     string `json:"status"` // as last sent to Consul, or the probe's if not sent yet
	Output     string `json:"output"`
	Registered bool   `json:"registered"`
	Error      string `json:"error,omitempty"` // why Consul has not been told, if it has not
	// SidecarID and SidecarPort are the Connect sidecar registered with
	// the service, if any: meshlet's inbound listener.
	SidecarID   string `json:"sidecar_id,omitempty"`
	SidecarPort int    `json:"sidecar_port,omitempty"`
}

// States returns the state of every service.
func (r *Registrar) States() []State {
	out := make([]State, 0, len(r.units))
	for _, u := range r.units {
		out = append(out, u.snapshot())
	}
	return out
}

// sleep waits d or until ctx ends, and reports whether it waited it all.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func checkIDOf(serviceID string) string { return "meshlet:" + serviceID }

// describeProbe says in a few words how the app is checked, for Consul's UI.
func describeProbe(c Check) string {
	switch c.Probe {
	case ProbeHTTP:
		return fmt.Sprintf("meshlet: HTTP GET %s every %v", c.HTTPPath, c.Interval)
	case ProbeNone:
		return "meshlet: passing while the sidecar runs (no probe)"
	default:
		return fmt.Sprintf("meshlet: TCP connect every %v", c.Interval)
	}
}
