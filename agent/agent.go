// Package agent wires meshlet together: configuration, start-up order,
// readiness, signals, graceful drain and the admin server. It holds no
// protocol logic: DNS, interception and proxying live in their own packages.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/agent/registration"
	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/dns"
	"github.com/meshlet/meshlet/intercept"
	"github.com/meshlet/meshlet/metrics"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/outbound"
	"github.com/meshlet/meshlet/vip"
)

// Agent is one running meshlet.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	vips *vip.Table
	mesh *upstream.Mesh
	// dispatch serves the intercepted connections with mesh's front-ends.
	dispatch *outbound.Dispatcher

	dnsServer *dns.Server
	outbound  net.Listener
	rules     *intercept.Manager      // nil without --intercept
	registrar *registration.Registrar // nil for a pure client sidecar
	// certs is the app's Connect trust material; nil when mTLS is off or
	// there is no identity to present (outbound is plaintext then).
	certs *certs.Manager
	// in is the inbound listener's; nil unless mTLS is on and an app is
	// registered.
	in      *inboundState
	metrics *metrics.Metrics

	listening atomic.Bool // DNS and outbound listeners bound
	rulesUp   atomic.Bool // rules installed (or not wanted)
	stopping  atomic.Bool
	conns     sync.WaitGroup
}

// Run starts meshlet and blocks until ctx is cancelled (the first SIGTERM),
// then stops in the order that keeps both the app's callers and the app
// itself from noticing: it turns the app's check critical, keeps serving
// for the drain period while callers stop choosing the app, deregisters
// it, stops accepting, lets in-flight requests finish until the drain
// timeout, removes the rules and returns. Closing hardStop (a second
// signal) skips what is left of both waits. With cfg.ExitWhenAppGone, the
// app's end (its namespace lost its interfaces, see appWatch) stops it the
// same way, without the drain period, and Run returns nil. Start-up
// errors name the setting at fault, and leave no rule behind.
func Run(ctx context.Context, hardStop <-chan struct{}, cfg Config, log *slog.Logger) (err error) {
	a := &Agent{cfg: cfg, log: log}
	if err := cfg.checkMTLS(); err != nil {
		return err
	}
	// The first look at the app's interfaces comes first of all, so that
	// even a short-lived app is seen before it ends.
	ctx, stopWith := context.WithCancelCause(ctx)
	defer stopWith(nil)
	if cfg.ExitWhenAppGone {
		go watchApp(ctx, net.Interfaces, appLookEvery, log, stopWith)
	}
	if a.vips, err = vip.NewTable(cfg.VIPCIDR); err != nil {
		return fmt.Errorf("--vip-cidr: %w", err)
	}

	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if cfg.Intercept && cfg.Mark != 0 {
		if err := intercept.CheckMark(cfg.Mark); err != nil {
			return fmt.Errorf("--mark: %w (meshlet needs root or CAP_NET_ADMIN to intercept; or run with --intercept=false)", err)
		}
		dialer = intercept.MarkedDialer(cfg.Mark, 5*time.Second)
	}
	resolvers, err := dns.ReadResolvConf(cfg.ResolvConf)
	if err != nil {
		return fmt.Errorf("--resolv-conf: %w", err)
	}

	consulCfg := api.DefaultConfig()
	consulCfg.Address = cfg.Consul
	consulCfg.Transport.DialContext = dialer.DialContext
	consulCfg.Transport.Proxy = nil
	consul, err := api.NewClient(consulCfg)
	if err != nil {
		return fmt.Errorf("--consul: %w", err)
	}
	instanceDialer := *dialer
	instanceDialer.Timeout = cfg.ConnectTimeout
	if instanceDialer.Timeout <= 0 {
		instanceDialer.Timeout = upstream.DefaultDialTimeout
	}
	if a.certs, err = newCerts(cfg, consul.Agent(), log); err != nil {
		return err
	}
	a.metrics = metrics.New()
	accessLog, closeAccessLog, err := openAccessLog(cfg.AccessLog)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.source("access-log"), err)
	}
	defer closeAccessLog()
	a.mesh, err = upstream.New(upstream.Config{
		Metrics:   a.metrics,
		AccessLog: accessLog,
		Consul:    consul,
		Dialer:    &instanceDialer,
		Logger:    log.With("part", "upstream"),
		Overrides: cfg.Policy,
		StickyKey: []byte(cfg.StickyKey),
		StateDir:  cfg.StateDir,
		StateID:   cfg.Consul, // state is per Consul cluster
		MaxStale:  cfg.MaxStale,
		QueryMode: cfg.ConsulQuery,
		Catalog:   cfg.ConsulCatalog,
		// X-Forwarded-For: the app's own address, not loopback.
		ClientAddr: clientAddr(cfg, log.With("part", "upstream")),
		MTLS:       cfg.MTLS,
		ClientTLS:  a.clientTLS(),
	})
	var stateErr *upstream.StateDirError
	if errors.As(err, &stateErr) {
		return fmt.Errorf("%s: %w", cfg.source("state-dir"), err)
	}
	if err != nil {
		return fmt.Errorf("starting upstream: %w", err)
	}
	if a.dispatch, err = outbound.New(a.mesh, outbound.Config{}); err != nil {
		return fmt.Errorf("starting upstream: %w", err)
	}
	// The inbound listener lives until Run returns: it drains with the
	// outbound side.
	inCtx, stopIn := context.WithCancel(context.Background())
	defer stopIn()
	if len(cfg.Services) > 0 {
		rc := registration.Config{
			Consul:       consul.Agent(),
			Services:     cfg.Services,
			Address:      cfg.Advertise,
			ExcludePorts: []uint16{cfg.DNSListen.Port(), cfg.OutboundListen.Port(), cfg.AdminListen.Port()},
			Logger:       log.With("part", "registration"),
		}
		if a.certs != nil {
			authz, err := newAuthorizer(cfg, dialer.DialContext)
			if err != nil {
				return err
			}
			a.in = &inboundState{ctx: inCtx, authz: authz}
			rc.Sidecar = a.startInbound
			rc.ExcludePorts = append(rc.ExcludePorts, cfg.InboundPort)
		}
		a.registrar, err = registration.New(rc)
		if err != nil {
			return fmt.Errorf("starting registration: %w", err)
		}
	}

	a.setupMetrics()
	// The admin server comes first, so /readyz can tell why the rest is not
	// up yet.
	admin, err := a.startAdmin()
	if err != nil {
		return err
	}
	defer admin.Close()

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	meshDone := make(chan struct{})
	go func() {
		defer close(meshDone)
		a.mesh.Run(runCtx)
	}()
	defer func() { stopRun(); <-meshDone }()
	if a.certs != nil {
		certsDone := make(chan struct{})
		go func() {
			defer close(certsDone)
			a.certs.Run(runCtx)
		}()
		defer func() { stopRun(); <-certsDone }()
	}

	a.dnsServer, err = dns.NewServer(dns.Config{
		Listen:    cfg.DNSListen.String(),
		Suffixes:  cfg.Suffixes,
		Services:  services{a},
		Upstreams: resolvers,
		TTL:       uint32(cfg.DNSTTL / time.Second),
		Dialer:    dialer,
		Logger:    log.With("part", "dns"),
		Metrics:   dnsMetrics{a.metrics.DNS()},
	})
	if err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	if err := a.dnsServer.Start(); err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	defer shutdownDNS(a.dnsServer)
	if a.outbound, err = net.Listen("tcp", cfg.OutboundListen.String()); err != nil {
		return fmt.Errorf("--outbound-listen: %w", err)
	}
	defer a.outbound.Close()
	a.listening.Store(true)

	if cfg.Intercept {
		if err := a.installRules(); err != nil {
			return err
		}
		defer a.removeRules()
	}
	a.rulesUp.Store(true)

	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		a.acceptOutbound(runCtx)
	}()
	// Registration starts once meshlet can serve, and never holds up the
	// app's own traffic: it retries in the background while Consul is away.
	regCtx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	regDone := make(chan struct{})
	if a.registrar != nil {
		go func() {
			defer close(regDone)
			a.registrar.Run(regCtx)
		}()
	} else {
		close(regDone)
	}
	log.Info("meshlet started", "dns", cfg.DNSListen, "outbound", cfg.OutboundListen, "admin", cfg.AdminListen,
		"consul", cfg.Consul, "suffixes", cfg.Suffixes, "vip_cidr", cfg.VIPCIDR, "intercept", cfg.Intercept,
		"registers", len(cfg.Services), "advertise", cfg.Advertise,
		"policy", cfg.Policy.String(), "sticky_key", cfg.StickyKey != "", "state_dir", cfg.StateDir, "max_stale", cfg.MaxStale, "exit_when_app_gone", cfg.ExitWhenAppGone, "mtls", cfg.MTLS, "inbound_port", cfg.InboundPort)

	// A signal and the app's end (watched from the start of Run) stop
	// meshlet by the same path; the app's end skips the waits that serve
	// callers of an app that is no more.
	<-ctx.Done()
	appGone := errors.Is(context.Cause(ctx), errAppGone)
	drainTimeout := cfg.DrainTimeout
	if appGone {
		drainTimeout = min(drainTimeout, appGoneDrain)
	}
	a.stopping.Store(true)
	a.leaveConsul(hardStop, stopReg, regDone, appGone)
	log.Info("stopping: draining in-flight requests", "drain_timeout", drainTimeout)
	a.outbound.Close()
	<-acceptDone

	drainCtx, cancelDrain := context.WithTimeout(context.Background(), drainTimeout)
	defer cancelDrain()
	go func() {
		select {
		case <-hardStop:
			log.Info("second signal: skipping the rest of the drain")
			cancelDrain()
		case <-drainCtx.Done():
		}
	}()
	inboundDone := make(chan struct{})
	go func() {
		defer close(inboundDone)
		a.stopInbound(drainCtx)
	}()
	if err := a.dispatch.Shutdown(drainCtx); err != nil {
		log.Warn("drain ended before every request finished", "err", err)
	}
	<-inboundDone
	a.conns.Wait()
	log.Info("stopped")
	return nil
}

// leaveConsul takes the app out of Consul in two steps: its check turns
// critical, so callers' blocking queries drop it within milliseconds while
// meshlet (and so the app's outbound traffic) keeps working; then, after
// the drain period, the registration goes. Consul being away makes this
// no slower than the call timeouts: the TTL and DeregisterAfter are the
// backstop then. When the app is gone there is nothing to drain: the
// registration goes at once.
func (a *Agent) leaveConsul(hardStop <-chan struct{}, stopReg context.CancelFunc, regDone <-chan struct{}, appGone bool) {
	if a.registrar == nil {
		return
	}
	registered := a.registrar.Registered()
	if !appGone {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := a.registrar.MarkCritical(ctx, "meshlet is stopping: draining before deregistration")
		cancel()
		if err != nil {
			a.log.Warn("could not mark the app critical in consul", "err", err)
		}
	}
	if registered && a.cfg.DrainPeriod > 0 && !appGone {
		a.log.Info("stopping: the app's check is critical; waiting for callers to stop choosing it", "drain_period", a.cfg.DrainPeriod)
		t := time.NewTimer(a.cfg.DrainPeriod)
		select {
		case <-t.C:
		case <-hardStop:
			a.log.Info("second signal: skipping the rest of the drain")
		}
		t.Stop()
	}
	stopReg()
	<-regDone
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := a.registrar.Deregister(ctx); err != nil {
		a.log.Warn("could not deregister the app; consul will remove it once its check has been critical long enough", "err", err)
	}
}

func shutdownDNS(s *dns.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.Shutdown(ctx)
}

func (a *Agent) installRules() error {
	ipt, err := intercept.NewIPTables()
	if err != nil {
		return fmt.Errorf("--intercept: %w", err)
	}
	a.rules, err = intercept.NewManager(a.interceptConfig(), ipt)
	if err != nil {
		return fmt.Errorf("--intercept: %w", err)
	}
	if err := a.rules.Install(); err != nil {
		// Leave nothing half-made behind.
		a.rules.Remove()
		return fmt.Errorf("--intercept: %w", err)
	}
	a.log.Info("iptables rules installed", "chain", intercept.ChainName)
	return nil
}

func (a *Agent) removeRules() {
	if a.rules == nil {
		return
	}
	if err := a.rules.Remove(); err != nil {
		a.log.Error("removing iptables rules", "err", err)
		return
	}
	a.log.Info("iptables rules removed")
}

func (a *Agent) interceptConfig() intercept.Config {
	return interceptConfig(a.cfg)
}

func interceptConfig(cfg Config) intercept.Config {
	return intercept.Config{
		DNSPort:      cfg.DNSListen.Port(),
		OutboundPort: cfg.OutboundListen.Port(),
		VIPCIDR:      cfg.VIPCIDR,
		Mark:         cfg.Mark,
		ExcludeUID:   cfg.ExcludeUID,
	}
}

// acceptOutbound takes the app's redirected connections and hands each to
// the proxy of the service whose VIP it was addressed to.
func (a *Agent) acceptOutbound(ctx context.Context) {
	var delay time.Duration
	for {
		c, err := a.outbound.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			a.log.Warn("accepting outbound connection", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		a.conns.Add(1)
		go func() {
			defer a.conns.Done()
			a.serveOutbound(ctx, c)
		}()
	}
}

func (a *Agent) serveOutbound(ctx context.Context, c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return
	}
	dst, err := intercept.OriginalDst(tc)
	if err != nil {
		a.log.Debug("outbound connection without an original destination", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	service, ok := a.serviceOf(dst.Addr())
	if !ok {
		// The home address of a service registered since the catalog's
		// last answer (asked on demand): ask it again, once.
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if a.mesh.RefreshCatalog(rctx) == nil {
			service, ok = a.serviceOf(dst.Addr())
		}
		cancel()
	}
	if !ok {
		a.log.Warn("connection to an address that is no service's VIP", "dst", dst, "from", c.RemoteAddr())
		c.Close()
		return
	}
	a.mesh.Watch(service)
	a.dispatch.ServeConn(ctx, c, service, service+"."+a.cfg.Suffixes[0])
}

// serviceOf maps a VIP back to its service. An address the table does not
// know yet can still be a service's home address, handed out by an earlier
// run of meshlet whose answer the app has cached.
func (a *Agent) serviceOf(addr netip.Addr) (string, bool) {
	if s, ok := a.vips.Lookup(addr); ok {
		return s, true
	}
	for _, name := range append(a.mesh.ServiceNames(), a.mesh.SubsetNames()...) {
		if a.vips.Home(name) == addr {
			if got, err := a.vips.Assign(name); err == nil && got == addr {
				return name, true
			}
		}
	}
	return "", false
}

// services answers the DNS server's questions about mesh names.
type services struct{ a *Agent }

// LookupVIP implements dns.Services.
func (s services) LookupVIP(ctx context.Context, name string) (netip.Addr, bool, error) {
	ok, err := s.a.meshNameExists(name)
	if err != nil && errors.Is(err, upstream.ErrNotKnownYet) {
		return netip.Addr{}, false, fmt.Errorf("%w: %w", dns.ErrNotKnownYet, err)
	}
	if err != nil || !ok {
		return netip.Addr{}, false, err
	}
	// Watch from the first answer on, so that the app's connection, which
	// follows at once, finds the instances already known.
	s.a.mesh.Watch(name)
	v, err := s.a.vips.Assign(name)
	if err != nil {
		return netip.Addr{}, false, err
	}
	return v, true, nil
}
