package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/consulerr"
)

// status is a check state as Consul takes it.
type status struct {
	health string // api.HealthPassing or api.HealthCritical
	output string
}

// unit registers one service and keeps its check current. Two goroutines
// run per unit: the prober, which only records results, and the syncer,
// which alone (with markCritical and deregister) talks to Consul; so a
// slow Consul never delays probing and a slow app never delays Consul.
type unit struct {
	r   *Registrar
	log *slog.Logger

	changed chan struct{} // a new probe result; buffered 1

	// consul serialises the calls to Consul and guards the fields after
	// it. It is a channel so that waiting for it honours a context.
	consul   chan struct{}
	pushed   status // what Consul was last told
	pushedAt time.Time
	gone     bool // deregistered; never register again

	// Written with the consul lock held; read anywhere.
	registered     atomic.Bool // Consul has the service, as far as we know
	everRegistered atomic.Bool

	wantSidecar bool // the service gets a Connect sidecar (Config.Sidecar)

	mu       sync.Mutex // guards the fields below
	sidecar  int        // the sidecar's port once its listener runs; 0: none
	svc      Service    // Port and ID are filled in once a discovered port is known
	current  status     // the latest verdict of the probe
	stopping *status    // set by markCritical: what Consul must say from then on
	lastErr  string
}

func newUnit(r *Registrar, s Service) *unit {
	u := &unit{
		r:       r,
		log:     r.log.With("service", s.Name),
		changed: make(chan struct{}, 1),
		consul:  make(chan struct{}, 1),
		svc:     s,
	}
	switch {
	case s.Check.Probe == ProbeNone:
		u.current = status{api.HealthPassing, "meshlet is running; no probe is configured"}
	case s.Check.InitialDelay > 0:
		u.current = status{api.HealthCritical, fmt.Sprintf("waiting %v (the initial delay) before the first probe", s.Check.InitialDelay)}
	default:
		u.current = status{api.HealthCritical, "waiting for the first probe"}
	}
	return u
}

func (u *unit) run(ctx context.Context) {
	u.mu.Lock()
	svc := u.svc
	u.mu.Unlock()
	if svc.Port == 0 {
		port, ok := u.discoverPort(ctx, svc.ignored)
		if !ok {
			return
		}
		svc = svc.withPort(port)
		u.mu.Lock()
		u.svc = svc
		u.lastErr = ""
		u.mu.Unlock()
		u.log.Info("found the app's port", "port", port, "id", svc.ID)
	}
	if u.wantSidecar {
		port, err := u.r.cfg.Sidecar(ctx, svc)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			u.log.Error("registering the app without a Connect sidecar: its inbound listener did not start", "err", err)
		} else {
			u.mu.Lock()
			u.sidecar = port
			u.mu.Unlock()
		}
	}
	target := netip.AddrPortFrom(u.r.cfg.Address, uint16(svc.Port))
	if p := newProber(svc.Check, target); p != nil {
		go u.probeLoop(ctx, p, svc.Check)
	}
	u.syncLoop(ctx, svc)
}

// discoverPort waits until the app listens on exactly one port callers can
// reach, seen twice in a row so that an app opening two ports one after the
// other is not registered on the first.
func (u *unit) discoverPort(ctx context.Context, ignored []int) (int, bool) {
	exclude := slices.Clone(u.r.cfg.ExcludePorts)
	for _, p := range ignored {
		exclude = append(exclude, uint16(p))
	}
	var last []int
	var lastMsg string
	for {
		socks, err := u.r.cfg.Listening()
		ports := appPorts(socks, exclude)
		var msg string
		switch {
		case err != nil:
			msg = fmt.Sprintf("cannot list the app's listening ports: %v (set SERVICE_PORT)", err)
		case len(ports) == 1 && slices.Equal(ports, last):
			return ports[0], true
		case len(ports) == 0:
			msg = "waiting for the app to listen on a TCP port (SERVICE_PORT names it)"
		case len(ports) > 1:
			msg = fmt.Sprintf("the app listens on several ports %v: set SERVICE_PORT to the one to register", ports)
		}
		last = ports
		if msg != "" && msg != lastMsg {
			if len(ports) > 1 || err != nil {
				u.log.Error("cannot register the app", "reason", msg)
			} else {
				u.log.Info(msg)
			}
			u.mu.Lock()
			u.lastErr = msg
			u.mu.Unlock()
			lastMsg = msg
		}
		if !sleep(ctx, u.r.cfg.DiscoverEvery) {
			return 0, false
		}
	}
}

// probeLoop probes the app every interval after the initial delay and
// records each verdict for the syncer.
func (u *unit) probeLoop(ctx context.Context, p prober, c Check) {
	if !sleep(ctx, c.InitialDelay) {
		return
	}
	v := verdict{successThreshold: c.SuccessThreshold, failureThreshold: c.FailureThreshold}
	for {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, c.Timeout)
		ok, out := p.probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if v.observe(ok) {
			if v.passing {
				u.log.Info("the app's check is passing", "probe", out)
			} else {
				u.log.Warn("the app's check is critical", "probe", out)
			}
		}
		st := status{api.HealthCritical, v.describe(out)}
		if v.passing {
			st.health = api.HealthPassing
		}
		u.mu.Lock()
		u.current = st
		u.mu.Unlock()
		select {
		case u.changed <- struct{}{}:
		default:
		}
		if !sleep(ctx, c.Interval-time.Since(start)) {
			return
		}
	}
}

// syncLoop keeps Consul's copy current: at every new verdict, and at least
// every heartbeat so that the TTL never lapses and a Consul that forgot the
// service (a restarted dev agent) learns it again within that time.
func (u *unit) syncLoop(ctx context.Context, svc Service) {
	heartbeat := min(svc.Check.Interval, svc.Check.TTL/3)
	attempt := 0
	for {
		err := u.sync(ctx, svc, heartbeat)
		if ctx.Err() != nil {
			return
		}
		wait, changed := heartbeat, u.changed
		if err != nil {
			attempt++
			wait = u.r.cfg.Backoff(attempt)
			// New verdicts must not shorten the backoff of a Consul that
			// is away.
			changed = nil
			u.log.Warn(retryMessage(err), "err", err, "attempt", attempt, "retry_in", wait.Round(time.Millisecond))
		} else {
			attempt = 0
		}
		u.mu.Lock()
		u.lastErr = ""
		if err != nil {
			u.lastErr = err.Error()
		}
		u.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// lock takes the right to talk to Consul, or fails when ctx ends first.
func (u *unit) lock(ctx context.Context) error {
	select {
	case u.consul <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (u *unit) unlock() { <-u.consul }

// sync tells Consul the current state if it changed or the heartbeat is
// due, registering the service first if Consul does not have it.
func (u *unit) sync(ctx context.Context, svc Service, heartbeat time.Duration) error {
	if err := u.lock(ctx); err != nil {
		return err
	}
	defer u.unlock()
	if u.gone {
		return nil
	}
	u.mu.Lock()
	st := u.current
	if u.stopping != nil {
		st = *u.stopping
	}
	u.mu.Unlock()
	if u.registered.Load() && st == u.pushed && time.Since(u.pushedAt) < heartbeat {
		return nil
	}
	return u.push(ctx, svc, st)
}

// retryMessage says why a sync failed: a Consul that refuses meshlet's
// token (err, explained by consulerr, names what to fix) is reachable, and
// saying otherwise sends the user to the network instead of the policy.
// Either way the sync is retried: the policy may be fixed meanwhile.
func retryMessage(err error) string {
	var status api.StatusError
	if errors.As(err, &status) && status.Code == http.StatusForbidden {
		return "consul's ACLs refuse the registration (err says what to fix); will retry"
	}
	return "cannot reach consul; will retry"
}

// push sends st to Consul; the caller holds the lock. An update that
// fails is followed by a registration at once: the usual cause is a Consul
// that no longer knows the check. Each call has a deadline of its own
// (CallTimeout), so that a Consul that hangs fails them as one that is
// down does, and the registration is not left with the time the update
// used up.
func (u *unit) push(ctx context.Context, svc Service, st status) error {
	if u.registered.Load() {
		cctx, cancel := context.WithTimeout(ctx, u.r.cfg.CallTimeout)
		err := u.r.cfg.Consul.UpdateTTLOpts(checkIDOf(svc.ID), st.output, st.health, (&api.QueryOptions{}).WithContext(cctx))
		cancel()
		if err == nil {
			u.pushed, u.pushedAt = st, time.Now()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u.log.Warn("updating the check failed; registering again", "id", svc.ID, "err", err)
		u.registered.Store(false)
	}
	reg := u.registration(svc, st)
	cctx, cancel := context.WithTimeout(ctx, u.r.cfg.CallTimeout)
	err := u.r.cfg.Consul.ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(cctx))
	cancel()
	if err != nil {
		return fmt.Errorf("registering %s in consul: %w", svc.ID, consulerr.Explain(err))
	}
	u.registered.Store(true)
	u.everRegistered.Store(true)
	u.pushed, u.pushedAt = st, time.Now()
	u.log.Info("registered in consul", "id", svc.ID, "address", reg.Address, "port", svc.Port, "status", st.health)
	// A registration cannot carry the check's output; this shows it at once
	// instead of at the next heartbeat. Failing here changes nothing.
	cctx, cancel = context.WithTimeout(ctx, u.r.cfg.CallTimeout)
	defer cancel()
	u.r.cfg.Consul.UpdateTTLOpts(checkIDOf(svc.ID), st.output, st.health, (&api.QueryOptions{}).WithContext(cctx))
	return nil
}

func (u *unit) registration(svc Service, st status) *api.AgentServiceRegistration {
	check := &api.AgentServiceCheck{
		CheckID: checkIDOf(svc.ID),
		Name:    describeProbe(svc.Check),
		Notes:   "A TTL check kept current by the meshlet sidecar from its probe of the app.",
		TTL:     svc.Check.TTL.String(),
		Status:  st.health,
	}
	if svc.Check.DeregisterAfter > 0 {
		check.DeregisterCriticalServiceAfter = svc.Check.DeregisterAfter.String()
	}
	reg := &api.AgentServiceRegistration{
		ID:      svc.ID,
		Name:    svc.Name,
		Tags:    svc.Tags,
		Port:    svc.Port,
		Address: u.r.cfg.Address.String(),
		Meta:    svc.Meta,
		Check:   check,
	}
	u.mu.Lock()
	sidecar := u.sidecar
	u.mu.Unlock()
	if sidecar != 0 {
		reg.Connect = &api.AgentServiceConnect{SidecarService: SidecarRegistration(svc, u.r.cfg.Address, sidecar)}
	}
	return reg
}

// SidecarRegistration is the Connect sidecar of svc, whose port is
// meshlet's inbound listener, as Consul registers its own sidecars:
// callers (meshlet, `consul connect proxy -upstream`, Envoy) find it in
// /v1/health/connect/NAME. It is nested in the app's registration, so
// Consul removes it with the app. Its one check is an alias of the app's:
// it is healthy exactly when the app is, at once (Consul's default TCP
// check would keep it critical for up to 10 s after each registration).
func SidecarRegistration(svc Service, addr netip.Addr, port int) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{
		// No ID: Consul refuses one in a nested sidecar and gives it
		// SidecarID's.
		Kind:    api.ServiceKindConnectProxy,
		Name:    svc.Name + "-sidecar-proxy",
		Address: addr.String(),
		Port:    port,
		Meta:    map[string]string{"meshlet": "inbound"},
		Proxy: &api.AgentServiceConnectProxyConfig{
			DestinationServiceName: svc.Name,
			DestinationServiceID:   svc.ID,
			LocalServiceAddress:    addr.String(),
			LocalServicePort:       svc.Port,
		},
		Checks: api.AgentServiceChecks{{
			Name:         "meshlet: follows " + svc.ID,
			Notes:        "meshlet's inbound listener is healthy when its app is.",
			AliasService: svc.ID,
		}},
	}
}

// SidecarID is the ID of the sidecar of the service with ID id: Consul's
// own default for sidecars.
func SidecarID(id string) string { return id + "-sidecar-proxy" }

func (u *unit) markCritical(ctx context.Context, reason string) error {
	if err := u.lock(ctx); err != nil {
		return fmt.Errorf("marking %s critical: %w", u.snapshot().Name, err)
	}
	defer u.unlock()
	st := status{api.HealthCritical, reason}
	u.mu.Lock()
	u.stopping = &st
	svc := u.svc
	u.mu.Unlock()
	// A service Consul may still have (even if the last update failed)
	// must turn critical; one never registered stays so.
	if !u.everRegistered.Load() || u.gone {
		return nil
	}
	if err := u.push(ctx, svc, st); err != nil {
		return fmt.Errorf("marking %s critical: %w", svc.ID, err)
	}
	u.log.Info("check marked critical", "id", svc.ID, "reason", reason)
	return nil
}

func (u *unit) deregister(ctx context.Context) error {
	if err := u.lock(ctx); err != nil {
		return fmt.Errorf("deregistering %s: %w", u.snapshot().Name, err)
	}
	defer u.unlock()
	u.gone = true
	if !u.everRegistered.Load() {
		return nil
	}
	u.mu.Lock()
	svc := u.svc
	u.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, u.r.cfg.CallTimeout)
	defer cancel()
	if err := u.r.cfg.Consul.ServiceDeregisterOpts(svc.ID, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
		return fmt.Errorf("deregistering %s: %w", svc.ID, err)
	}
	u.registered.Store(false)
	u.log.Info("deregistered from consul", "id", svc.ID)
	return nil
}

// snapshot returns the unit's State without waiting for Consul calls.
func (u *unit) snapshot() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := State{
		ID:      u.svc.ID,
		Name:    u.svc.Name,
		Address: u.r.cfg.Address.String(),
		Port:    u.svc.Port,
		Probe:   u.svc.Check.Probe.String(),
		Status:  u.current.health,
		Output:  u.current.output,
		Error:   u.lastErr,

		Registered: u.registered.Load(),
	}
	if u.sidecar != 0 {
		st.SidecarID, st.SidecarPort = SidecarID(u.svc.ID), u.sidecar
	}
	if u.stopping != nil {
		st.Status, st.Output = u.stopping.health, u.stopping.output
	}
	return st
}
