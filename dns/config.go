package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// Defaults applied by [NewServer] to zero fields of [Config].
const (
	DefaultListen         = "127.0.0.1:15053"
	DefaultForwardTimeout = 2 * time.Second
	DefaultTTL            = 5
)

// DefaultSuffixes are the mesh suffixes used when Config.Suffixes is empty.
func DefaultSuffixes() []string { return []string{"local", "service.consul"} }

// Config holds everything the server needs. Zero values get the defaults
// named on each field.
type Config struct {
	// Listen is the address served on UDP and TCP; default DefaultListen.
	// With port 0 the TCP socket gets the UDP socket's port when it is free.
	Listen string
	// Suffixes are the mesh suffixes without dots at the ends, e.g.
	// {"local", "service.consul"}; matched case-insensitively, longest first.
	// Default DefaultSuffixes().
	Suffixes []string
	// Services answers mesh names. Required.
	Services Services
	// Upstreams are "ip:port" resolvers for all non-mesh names, tried in
	// order (from ReadResolvConf). At least one is required. Host names are
	// refused: resolving them would need the resolver being configured.
	Upstreams []string
	// ForwardTimeout bounds each try of one upstream; default 2s.
	ForwardTimeout time.Duration
	// Dialer is used for forwarding: it carries the socket mark that keeps
	// our own queries out of the iptables redirect; nil = plain dialer.
	Dialer *net.Dialer
	// TTL of mesh answers and of negative answers; default 5.
	TTL uint32
	// Logger receives the server's logs; nil = slog.Default().
	Logger *slog.Logger
	// Metrics counts queries; nil counts nothing.
	Metrics Metrics
}

// withDefaults returns a copy of cfg with defaults filled in and every field
// checked, so that the server never has to look at a bad value.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if _, err := netip.ParseAddrPort(cfg.Listen); err != nil {
		return cfg, fmt.Errorf("config Listen %q: want ip:port: %w", cfg.Listen, err)
	}
	if cfg.Services == nil {
		return cfg, errors.New("config Services: required")
	}
	if len(cfg.Suffixes) == 0 {
		cfg.Suffixes = DefaultSuffixes()
	}
	suffixes := make([]string, 0, len(cfg.Suffixes))
	for _, s := range cfg.Suffixes {
		norm, err := normalizeSuffix(s)
		if err != nil {
			return cfg, fmt.Errorf("config Suffixes: %w", err)
		}
		for _, seen := range suffixes {
			if seen == norm {
				return cfg, fmt.Errorf("config Suffixes: %q listed twice", s)
			}
		}
		suffixes = append(suffixes, norm)
	}
	cfg.Suffixes = suffixes
	if len(cfg.Upstreams) == 0 {
		return cfg, errors.New("config Upstreams: at least one resolver required")
	}
	upstreams := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			return cfg, fmt.Errorf("config Upstreams %q: want ip:port: %w", u, err)
		}
		if ap.Port() == 0 {
			return cfg, fmt.Errorf("config Upstreams %q: port 0", u)
		}
		upstreams = append(upstreams, ap.String())
	}
	cfg.Upstreams = upstreams
	switch {
	case cfg.ForwardTimeout < 0:
		return cfg, fmt.Errorf("config ForwardTimeout %s: must not be negative", cfg.ForwardTimeout)
	case cfg.ForwardTimeout == 0:
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	return cfg, nil
}

// normalizeSuffix lower-cases s and checks it is a domain name with no dot at
// either end.
func normalizeSuffix(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty suffix")
	}
	if strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
		return "", fmt.Errorf("suffix %q: write it without dots at the ends", s)
	}
	for i := 0; i < len(s); i++ {
		if !isServiceByte(s[i]) && s[i] != '.' {
			return "", fmt.Errorf("suffix %q: byte %q is not allowed (letters, digits, '-', '_', '.')", s, s[i])
		}
	}
	if _, ok := mdns.IsDomainName(s); !ok || strings.Contains(s, "..") {
		return "", fmt.Errorf("suffix %q: not a domain name", s)
	}
	return strings.ToLower(s), nil
}
