package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/agent/registration"
	"github.com/meshlet/meshlet/inbound"
	"github.com/meshlet/meshlet/intercept"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/upstream"
)

// newCerts makes the Connect trust material's manager for the identity
// meshlet presents, or nil when mTLS is off or there is no identity. The
// latter is said at start, since it means outbound stays plaintext.
func newCerts(cfg Config, consul certs.Consul, log *slog.Logger) (*certs.Manager, error) {
	if cfg.MTLS == upstream.MTLSOff {
		log.Info("mtls: off; every connection is plaintext", "setting", cfg.source("mtls"))
		return nil, nil
	}
	name, from := cfg.mtlsIdentity()
	if name == "" {
		// checkMTLS refused strict mode already.
		log.Warn("mtls: no identity to present, so outbound connects in plaintext, even to instances that offer mTLS: register the app (SERVICE_NAME) or set --mtls-identity (MESHLET_MTLS_IDENTITY)",
			"mode", cfg.MTLS)
		return nil, nil
	}
	if len(cfg.Services) > 0 && cfg.MTLSIdentity != "" && cfg.MTLSIdentity != name {
		log.Warn("mtls: --mtls-identity is ignored: a sidecar that registers an app presents the app's identity",
			"identity", name, "ignored", cfg.MTLSIdentity)
	}
	m, err := certs.New(certs.Config{Consul: consul, Service: name, Log: log.With("part", "certs")})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.source("mtls"), err)
	}
	log.Info("mtls: presenting a Connect identity", "mode", cfg.MTLS, "service", name, "from", from)
	return m, nil
}

// clientTLS is the manager as upstream takes it: a nil interface, not a
// nil pointer in one, when there is none.
func (a *Agent) clientTLS() upstream.ClientTLS {
	if a.certs == nil {
		return nil
	}
	return a.certs
}

// certsNotReady says why the trust material keeps meshlet from being
// ready: before the first roots and leaf, or once the leaf expired.
func (a *Agent) certsNotReady() []string {
	if a.certs == nil {
		return nil
	}
	s := a.certs.Snapshot()
	if !s.Ready && connectDisabled(s) && a.cfg.MTLS != upstream.MTLSStrict {
		return nil // a note says so: permissive mode without Connect is plaintext, as before
	}
	if !s.Ready {
		why := fmt.Sprintf("mtls: waiting for the Connect CA roots and the leaf of %q from consul", s.Service)
		for _, w := range s.Warnings {
			why += "; " + w
		}
		return []string{why}
	}
	if !s.LeafNotAfter.IsZero() && !time.Now().Before(s.LeafNotAfter) {
		return []string{fmt.Sprintf("mtls: leaf %s of %q expired at %s and consul gave no new one: peers refuse it",
			s.LeafSerial, s.Service, s.LeafNotAfter.Format(time.RFC3339))}
	}
	return nil
}

// connectDisabled reports whether Consul answered that Connect is off
// (its ErrConnectNotEnabled), which no retry will change.
func connectDisabled(s certs.Snapshot) bool {
	for _, w := range s.Warnings {
		if strings.Contains(w, "Connect must be enabled") {
			return true
		}
	}
	return false
}

// certsNotes says, while ready, what of the trust material needs an
// operator's eye: consul not answering its watches (the last leaf keeps
// serving until it expires), a leaf near its expiry.
func (a *Agent) certsNotes() []string {
	if a.certs == nil {
		return nil
	}
	s := a.certs.Snapshot()
	if !s.Ready && connectDisabled(s) {
		return []string{fmt.Sprintf("mtls: consul has Connect disabled, so %s mode has no certificate and callers of the app use plaintext; enable Connect (connect { enabled = true }) or set --mtls=off", a.cfg.MTLS)}
	}
	if !s.Ready || len(s.Warnings) == 0 {
		return nil
	}
	note := fmt.Sprintf("mtls: serving the last leaf %s of %q until it expires at %s", s.LeafSerial, s.Service, s.LeafNotAfter.Format(time.RFC3339))
	for _, w := range s.Warnings {
		note += "; " + w
	}
	return []string{note}
}

// inboundState is meshlet's inbound listener and the strict mode's rules,
// both made once the app's port is known (see startInbound).
type inboundState struct {
	ctx    context.Context // of the listener; cancelled when Run returns
	authz  inbound.Authorizer
	mu     sync.Mutex
	ln     *inbound.Listener
	served chan struct{} // closed when ln's Serve returned
	strict *intercept.Strict
	err    string // why strict mode does not hold, for /readyz
}

// newAuthorizer is the client of Consul's authorize endpoint. Its calls
// take no context, so the client bounds them.
func newAuthorizer(cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (inbound.Authorizer, error) {
	c := api.DefaultConfig()
	c.Address = cfg.Consul
	// api.NewClient applies CONSUL_CACERT and the other TLS settings only
	// to a client it makes itself, so this one is made with them.
	hc, err := api.NewHttpClient(&http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}, c.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul TLS settings (CONSUL_CACERT, CONSUL_CLIENT_CERT, ...): %w", err)
	}
	hc.Timeout = 5 * time.Second
	c.HttpClient = hc
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("--consul: %w", err)
	}
	return client.Agent(), nil
}

// startInbound starts the mTLS inbound listener in front of the app's
// service svc, whose port is now known, on the app's address and
// --inbound-port, and in strict mode then keeps everyone but the
// namespace off the app's port. It returns the listener's port, which the
// registrar registers as the app's Connect sidecar.
func (a *Agent) startInbound(ctx context.Context, svc registration.Service) (int, error) {
	in := a.in
	listen := netip.AddrPortFrom(a.cfg.Advertise, a.cfg.InboundPort)
	// The probe's address: the app listens there.
	app := netip.AddrPortFrom(a.cfg.Advertise, uint16(svc.Port))
	l, err := inbound.New(inbound.Config{
		Listen: listen.String(), App: app.String(), Service: svc.Name,
		TLS: a.certs, Consul: in.authz, Log: a.log.With("part", "inbound"),
		Refused: a.metrics.HandshakeFailed,
	})
	if err != nil {
		return 0, err
	}
	errc := make(chan error, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		err := l.Serve(in.ctx)
		errc <- err
		if err != nil {
			a.log.Error("inbound listener stopped", "err", err)
		}
	}()
	select {
	case <-l.Bound():
	case err := <-errc:
		if err == nil {
			err = errors.New("stopped before it listened")
		}
		return 0, fmt.Errorf("%s: %w", a.cfg.source("inbound-port"), err)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	in.mu.Lock()
	in.ln, in.served = l, served
	in.mu.Unlock()
	if a.cfg.MTLS == upstream.MTLSStrict {
		a.protectApp(uint16(svc.Port))
	}
	return int(a.cfg.InboundPort), nil
}

// protectApp installs the strict mode's rules for the app's port. A
// failure leaves meshlet running (the inbound works) but not ready, and
// says why.
func (a *Agent) protectApp(port uint16) {
	in := a.in
	err := func() error {
		ipt, err := intercept.NewIPTables()
		if err != nil {
			return err
		}
		s, err := intercept.NewStrict(ipt)
		if err != nil {
			return err
		}
		in.mu.Lock()
		in.strict = s
		in.mu.Unlock()
		return s.Protect(port)
	}()
	in.mu.Lock()
	defer in.mu.Unlock()
	if err != nil {
		in.err = fmt.Sprintf("mtls strict: the app's port %d is not protected: %v (meshlet needs CAP_NET_ADMIN)", port, err)
		a.log.Error("mtls strict: could not keep plaintext callers off the app's port", "port", port, "err", err)
		return
	}
	a.log.Info("mtls strict: only meshlet's inbound reaches the app's port now", "port", port, "chain", intercept.StrictTable+"/"+intercept.StrictChain)
}

// strictNotReady says why strict mode does not hold.
func (a *Agent) strictNotReady() []string {
	in := a.in
	if in == nil {
		return nil
	}
	in.mu.Lock()
	s, why := in.strict, in.err
	in.mu.Unlock()
	if why != "" {
		return []string{why}
	}
	if s != nil {
		if err := s.Verify(); err != nil {
			return []string{"mtls strict: " + err.Error()}
		}
	}
	return nil
}

// stopInbound stops accepting mTLS callers and lets their connections end
// until ctx is done, then removes the strict mode's rules.
func (a *Agent) stopInbound(ctx context.Context) {
	in := a.in
	if in == nil {
		return
	}
	in.mu.Lock()
	l, served, s := in.ln, in.served, in.strict
	in.mu.Unlock()
	if l != nil {
		if err := l.Shutdown(ctx); err != nil {
			a.log.Warn("inbound: drain ended before every connection finished", "err", err)
		}
		<-served
	}
	if s != nil {
		if err := s.Remove(); err != nil {
			a.log.Error("removing strict-mode rules", "err", err)
			return
		}
		a.log.Info("strict-mode rules removed")
	}
}
