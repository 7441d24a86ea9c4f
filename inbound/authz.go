package inbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Authorizer is what inbound asks of the local Consul agent; *api.Agent
// has it. The call takes no context: the client it comes from must have a
// timeout of its own (inbound stops waiting after Config.AuthorizeTimeout,
// but cannot cancel the request).
type Authorizer interface {
	ConnectAuthorize(*api.AgentAuthorizeParams) (*api.AgentAuthorize, error)
}

// caller is what a decision is about: a client certificate's URI and
// serial, as Consul's authorize endpoint takes them.
type caller struct{ uri, serial string }

type decision struct {
	allowed bool
	reason  string
	at      time.Time
}

type entry struct {
	dec      decision
	have     bool
	lastErr  error
	inflight chan struct{} // closed when the running lookup ends; nil when none runs
}

// decisions caches Consul's answers per caller for a short time, so that a
// burst of connections from one caller costs one request to the agent,
// while an intention change still decides new connections within the TTL.
type decisions struct {
	consul  Authorizer
	target  string
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	entries map[caller]*entry
}

// errConsul marks a refusal for want of an answer from Consul, when no
// earlier decision stands in for it.
var errConsul = errors.New("asking consul to authorize")

// decide returns a decision about c no older than maxAge, asking Consul
// when the cached one is older. Only one lookup per caller runs at a time;
// others wait for it. When Consul fails or is slow, the last decision
// stands (fail-static, as the rest of meshlet does); without one, the
// caller is refused.
func (d *decisions) decide(ctx context.Context, c caller, maxAge time.Duration) (decision, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	d.mu.Lock()
	e := d.entries[c]
	if e == nil {
		e = &entry{}
		d.entries[c] = e
	}
	if e.have && d.now().Sub(e.dec.at) < maxAge {
		dec := e.dec
		d.mu.Unlock()
		return dec, nil
	}
	if e.inflight == nil {
		e.inflight = make(chan struct{})
		go d.lookup(c, e)
	}
	wait := e.inflight
	d.mu.Unlock()

	select {
	case <-wait:
	case <-ctx.Done():
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case e.have && d.now().Sub(e.dec.at) < maxAge:
		return e.dec, nil
	case e.have:
		// Consul failed or is late: the last decision stands.
		return e.dec, nil
	case e.lastErr != nil:
		return decision{}, fmt.Errorf("%w: %w", errConsul, e.lastErr)
	default:
		return decision{}, fmt.Errorf("%w: no answer within %v", errConsul, d.timeout)
	}
}

func (d *decisions) lookup(c caller, e *entry) {
	resp, err := d.consul.ConnectAuthorize(&api.AgentAuthorizeParams{Target: d.target, ClientCertURI: c.uri, ClientCertSerial: c.serial})
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil && resp == nil {
		err = errors.New("empty answer")
	}
	if err != nil {
		e.lastErr = err
		d.log.Warn("inbound: consul authorize failed; keeping the last decision", "caller", c.uri, "err", err, "had_decision", e.have)
	} else {
		e.lastErr = nil
		if e.have && e.dec.allowed != resp.Authorized {
			d.log.Info("inbound: intentions changed for a caller", "caller", c.uri, "allowed", resp.Authorized, "reason", resp.Reason)
		}
		e.dec, e.have = decision{allowed: resp.Authorized, reason: resp.Reason, at: d.now()}, true
	}
	close(e.inflight)
	e.inflight = nil
}

// forget drops the entries of callers that are not in keep, so that the
// cache does not grow with every caller ever seen (leaves are renewed and
// their serials change).
func (d *decisions) forget(keep map[caller]bool, olderThan time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c, e := range d.entries {
		if !keep[c] && e.inflight == nil && (!e.have || d.now().Sub(e.dec.at) > olderThan) {
			delete(d.entries, c)
		}
	}
}
