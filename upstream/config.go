package upstream

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/backoff"
	"github.com/meshlet/meshlet/metrics"
)

// Defaults for the zero values of [Config].
const (
	// DefaultDialTimeout suits a service network, where a connection is
	// made in well under a millisecond: 2 s lets Linux resend one lost
	// SYN (after 1 s) and still connect, while a dead instance costs at
	// most one request that long, as the first connect timeout ejects it.
	DefaultDialTimeout        = 2 * time.Second
	DefaultFirstAnswerTimeout = 5 * time.Second
	DefaultWaitTime           = 5 * time.Minute
	DefaultCallTimeout        = 5 * time.Second
	DefaultRetryBase          = 250 * time.Millisecond
	DefaultRetryMax           = 10 * time.Second
	DefaultSettleTime         = 30 * time.Second
)

// Config is what a [Mesh] needs. Zero values take the defaults above.
type Config struct {
	// Consul is the client for the catalog and health watches. Required.
	Consul *api.Client

	// Dialer opens the connections to instances (see Mesh.Dial, which
	// every front-end uses); the agent's carries the socket mark that keeps
	// them out of the interception rules. Nil means a plain dialer with a
	// DefaultDialTimeout timeout.
	Dialer *net.Dialer

	// Logger receives the package's logs. Nil discards them.
	Logger *slog.Logger

	// FirstAnswerTimeout is how long a request waits for the first Consul
	// answer of a service whose watch has just started, so that the first
	// connection after a DNS lookup does not fail for want of instances.
	FirstAnswerTimeout time.Duration

	// WaitTime is the longest a blocking query waits for a change. A
	// blocking query that has no answer after WaitTime + WaitTime/16 (the
	// jitter Consul adds) + CallTimeout fails.
	WaitTime time.Duration

	// CallTimeout is how long a query of Consul that does not block may
	// take, and the deadline of the liveness check that tells a Consul
	// that hangs (accepts connections and never answers) from one with
	// nothing new to say: when nothing has answered for PingEvery, the
	// check asks, and no answer within CallTimeout fails every query in
	// flight, as a Consul that is down would.
	CallTimeout time.Duration

	// RetryBackoff returns how long a watch waits before its next query
	// after attempt consecutive failures (attempt starts at 1). Nil means
	// backoff.FullJitter(DefaultRetryBase, DefaultRetryMax).
	RetryBackoff func(attempt int) time.Duration

	// Overrides are the caller's own policy settings (see ParseOverrides),
	// which win over the services' meta in Consul.
	Overrides Overrides

	// StickyKey, when set, keys the sticky cookie values, so that nobody
	// without it can compute the value of an instance. Without it values
	// are opaque and stable, but not secret. Every sidecar of a mesh must
	// use the same key, or clients move when they reach another sidecar.
	StickyKey []byte

	// StateDir is where the last good instances are saved, so that a
	// meshlet restarted while Consul is unreachable still routes. Empty
	// means nothing is saved. It is made if missing.
	StateDir string

	// StateID names the Consul cluster the state belongs to (the agent uses
	// Consul's address), so that a meshlet pointed elsewhere does not route
	// on another cluster's instances.
	StateID string

	// MaxStale is how long meshlet keeps routing on the last good instances
	// while Consul does not answer; once a service's instances are older,
	// its requests get 503. Zero means no limit.
	MaxStale time.Duration

	// SettleTime is how long after an outage of Consul the instances that
	// were passing before it keep getting requests even when Consul
	// reports them critical (its checks start critical until they first
	// run); only failing requests take them out meanwhile. Zero means
	// DefaultSettleTime, negative turns it off.
	SettleTime time.Duration

	// ClientAddr is the app's own address, which X-Forwarded-For names
	// for requests that come over loopback: the app dials a loopback VIP,
	// so the address meshlet sees is 127.0.0.1, which tells an instance
	// nothing. The agent sets the address the app is registered with, or
	// else the namespace's primary address. The zero value keeps the
	// address the connection came from (see Mesh.AppendClientIP).
	ClientAddr netip.Addr

	// Metrics receives the routing's counters (requests, retries,
	// instances, stickiness, raw TCP). Nil counts nothing.
	Metrics *metrics.Metrics

	// AccessLog, when not nil, gets one line per request of the app
	// (see Mesh.Done). Nil: no access log, and no cost.
	AccessLog *slog.Logger

	// MTLS is the mode of Consul Connect mTLS; "" is MTLSPermissive.
	MTLS MTLSMode

	// ClientTLS gives the app's identity for mTLS toward instances. Nil:
	// the sidecar has no identity, so it connects in plaintext (and in
	// MTLSStrict refuses instead).
	ClientTLS ClientTLS

	// clientXFF is ClientAddr as X-Forwarded-For writes it, made once.
	clientXFF string

	// PingEvery is how long Consul may go without answering before the
	// liveness check asks it. Zero means DefaultPingEvery; tests shorten
	// it.
	PingEvery time.Duration

	// QueryMode is how the watches ask Consul; "" is QueryDefault.
	QueryMode QueryMode

	// Catalog is how the mesh learns the service names; "" is
	// CatalogWatch. CatalogRefreshEvery (zero: the default) spaces the
	// questions of CatalogOnDemand.
	Catalog             CatalogMode
	CatalogRefreshEvery time.Duration
}

// DefaultPingEvery bounds, with CallTimeout, how long a hung Consul goes
// unnoticed: at most PingEvery + CallTimeout after its last answer. A
// tiny request (/v1/status/leader) every 5 s per sidecar, and only while
// no blocking query returns, costs Consul next to nothing.
const DefaultPingEvery = 5 * time.Second

// withDefaults checks cfg and fills in its zero values.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Consul == nil {
		return cfg, errors.New("upstream config: Consul client is required")
	}
	for _, d := range []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"FirstAnswerTimeout", &cfg.FirstAnswerTimeout, DefaultFirstAnswerTimeout},
		{"WaitTime", &cfg.WaitTime, DefaultWaitTime},
		{"CallTimeout", &cfg.CallTimeout, DefaultCallTimeout},
		{"MaxStale", &cfg.MaxStale, 0},
		{"SettleTime", &cfg.SettleTime, DefaultSettleTime},
		{"CatalogRefreshEvery", &cfg.CatalogRefreshEvery, DefaultCatalogRefreshEvery},
	} {
		if d.name == "SettleTime" && *d.value < 0 {
			*d.value = 0 // off
			continue
		}
		if *d.value < 0 {
			return cfg, fmt.Errorf("upstream config: %s is negative (%v)", d.name, *d.value)
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}
	if cfg.MTLS == "" {
		cfg.MTLS = MTLSPermissive
	}
	if _, err := ParseMTLSMode(string(cfg.MTLS)); err != nil {
		return cfg, fmt.Errorf("upstream config: %w", err)
	}
	cfg.clientXFF = ""
	if cfg.ClientAddr.IsValid() {
		cfg.clientXFF = cfg.ClientAddr.Unmap().WithZone("").String()
	}
	if cfg.PingEvery <= 0 {
		cfg.PingEvery = DefaultPingEvery
	}
	if cfg.Catalog != CatalogWatch && cfg.Catalog != CatalogOnDemand {
		return cfg, fmt.Errorf("upstream config: catalog mode %q: want %q or %q", cfg.Catalog, CatalogWatch, CatalogOnDemand)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: DefaultDialTimeout}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryBackoff == nil {
		cfg.RetryBackoff = backoff.FullJitter(DefaultRetryBase, DefaultRetryMax)
	}
	return cfg, nil
}
