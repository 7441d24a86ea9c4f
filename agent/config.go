package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/meshlet/meshlet/agent/registration"
	"github.com/meshlet/meshlet/dns"
	"github.com/meshlet/meshlet/upstream"
)

// Config is everything `meshlet run` can be told. Every field has a flag and
// a MESHLET_* environment variable; a flag wins over the variable, the
// variable over the default.
type Config struct {
	Consul         string       // Consul HTTP address; default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500
	Suffixes       []string     // mesh DNS suffixes
	VIPCIDR        netip.Prefix // range of virtual IPs, inside 127.0.0.0/8
	DNSListen      netip.AddrPort
	OutboundListen netip.AddrPort
	AdminListen    netip.AddrPort
	ResolvConf     string        // where the app's own nameservers are read from
	Intercept      bool          // install the iptables rules
	Mark           uint32        // socket mark of meshlet's own connections
	ExcludeUID     int           // -1: none; else traffic of this uid bypasses interception too
	DrainTimeout   time.Duration // how long in-flight requests may run after SIGTERM
	LogLevel       slog.Level
	LogFormat      string // text or json
	// AccessLog is where one JSON line per request goes: "" (none),
	// "stdout", "stderr" or a file, appended to.
	AccessLog string

	// AdvertiseAddr is the go-sockaddr template of the address the app is
	// registered with; evaluated only when there is something to register.
	AdvertiseAddr string
	// DrainPeriod is how long, after SIGTERM, the app's check stays
	// critical while meshlet keeps serving, before it deregisters the app.
	DrainPeriod time.Duration
	// ExitWhenAppGone makes meshlet stop, deregister and exit 0 once the
	// app's network namespace has lost every interface but loopback (the
	// app's container stopped).
	ExitWhenAppGone bool

	// Policy overrides the services' traffic policy from their Consul meta.
	Policy upstream.Overrides
	// StickyKey keys the sticky cookie values; empty: stable, not secret.
	StickyKey string
	// StateDir is where the last good instances are saved, for a restart
	// during a Consul outage; empty: nothing is saved.
	StateDir string
	// MaxStale bounds how long meshlet routes on the last good instances
	// while Consul does not answer; 0: no limit.
	MaxStale time.Duration
	// ConnectTimeout bounds a connection to an instance.
	ConnectTimeout time.Duration
	// ConsulQuery is how the watches ask Consul (upstream.QueryMode).
	ConsulQuery upstream.QueryMode
	// ConsulCatalog is how the service names are learnt (upstream.CatalogMode).
	ConsulCatalog upstream.CatalogMode
	// DNSTTL is the TTL of meshlet's own DNS answers and, through their
	// SOA, of its negative answers; whole seconds.
	DNSTTL time.Duration

	// MTLS is how Consul Connect's mutual TLS is used (--mtls).
	MTLS upstream.MTLSMode
	// MTLSIdentity is the service whose identity a client-only sidecar
	// (one that registers no app) presents; a registered app's own name
	// wins over it.
	MTLSIdentity string
	// InboundPort is the port of the mTLS inbound listener, on the app's
	// registered address.
	InboundPort uint16

	// Services and Advertise come from the registrator-style SERVICE_*
	// variables through LoadRegistration, not from flags. No services: a
	// pure client sidecar.
	Services  []registration.Service
	Advertise netip.Addr

	from map[string]string // flag name → the flag or variable that set it, for errors found later
}

// setting is one flag with its environment variable and help.
type setting struct {
	flag, env, def, help string
	parse                func(c *Config, v string) error
}

func settings(consulDefault string) []setting {
	return []setting{
		{"consul", "MESHLET_CONSUL", consulDefault, "Consul HTTP address (default: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500)",
			func(c *Config, v string) error {
				if strings.TrimSpace(v) == "" {
					return errors.New("must not be empty")
				}
				c.Consul = v
				return nil
			}},
		{"consul-query", "MESHLET_CONSUL_QUERY", "default", "how the watches ask Consul: default (blocking queries; the agent streams the instances), plain, cached (the instances from the agent's cache) or stale",
			func(c *Config, v string) error {
				if v == "default" {
					v = ""
				}
				m, err := upstream.ParseQueryMode(v)
				if err != nil {
					return err
				}
				c.ConsulQuery = m
				return nil
			}},
		{"consul-catalog", "MESHLET_CONSUL_CATALOG", "on-demand", "how meshlet learns the service names: on-demand (asks the catalog at start and when an unknown name is looked up, at most 4 times a second) or watch (a blocking query per sidecar, woken by every registration in the cluster)",
			func(c *Config, v string) error {
				m, err := upstream.ParseCatalogMode(v)
				if err != nil {
					return err
				}
				c.ConsulCatalog = m
				return nil
			}},
		{"suffix", "MESHLET_SUFFIX", "local,service.consul", "comma-separated DNS suffixes of mesh names (NAME.SUFFIX → service NAME)",
			func(c *Config, v string) error {
				c.Suffixes = nil
				for _, s := range strings.Split(v, ",") {
					s = strings.ToLower(strings.Trim(strings.TrimSpace(s), "."))
					if s == "" {
						continue
					}
					if strings.ContainsAny(s, " /\\@") {
						return fmt.Errorf("%q is not a DNS suffix", s)
					}
					c.Suffixes = append(c.Suffixes, s)
				}
				if len(c.Suffixes) == 0 {
					return errors.New("needs at least one suffix")
				}
				return nil
			}},
		{"vip-cidr", "MESHLET_VIP_CIDR", "127.77.0.0/16", "loopback range the virtual IPs of services come from",
			func(c *Config, v string) error {
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return fmt.Errorf("%q is not a CIDR", v)
				}
				if !p.Addr().Is4() || !netip.MustParsePrefix("127.0.0.0/8").Contains(p.Addr()) || p.Bits() < 8 {
					return fmt.Errorf("%s is not inside 127.0.0.0/8 (VIPs must be loopback addresses)", p)
				}
				if p.Bits() > 30 {
					return fmt.Errorf("%s is too small (at most /30)", p)
				}
				c.VIPCIDR = p.Masked()
				return nil
			}},
		{"dns-listen", "MESHLET_DNS_LISTEN", "127.0.0.1:15053", "address of the DNS listener (UDP and TCP)", addrPort(func(c *Config) *netip.AddrPort { return &c.DNSListen })},
		{"outbound-listen", "MESHLET_OUTBOUND_LISTEN", "127.0.0.1:15001", "address of the listener intercepted connections are redirected to", addrPort(func(c *Config) *netip.AddrPort { return &c.OutboundListen })},
		{"admin-listen", "MESHLET_ADMIN_LISTEN", "127.0.0.1:15000", "address of the admin server (/healthz, /readyz, /v1/state)", addrPort(func(c *Config) *netip.AddrPort { return &c.AdminListen })},
		{"resolv-conf", "MESHLET_RESOLV_CONF", "/etc/resolv.conf", "resolv.conf whose nameservers answer names outside the mesh",
			func(c *Config, v string) error {
				if v == "" {
					return errors.New("must not be empty")
				}
				c.ResolvConf = v
				return nil
			}},
		{"intercept", "MESHLET_INTERCEPT", "true", "install iptables rules that redirect the app's DNS and VIP traffic to meshlet",
			func(c *Config, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return fmt.Errorf("%q is not true or false", v)
				}
				c.Intercept = b
				return nil
			}},
		{"mark", "MESHLET_MARK", "0x6d6c", "socket mark on meshlet's own connections, which the rules let through (0 to use --exclude-uid alone)",
			func(c *Config, v string) error {
				m, err := strconv.ParseUint(v, 0, 32)
				if err != nil {
					return fmt.Errorf("%q is not a 32-bit number", v)
				}
				c.Mark = uint32(m)
				return nil
			}},
		{"exclude-uid", "MESHLET_EXCLUDE_UID", "-1", "uid whose traffic the rules let through, e.g. when meshlet runs as its own user (-1: none)",
			func(c *Config, v string) error {
				n, err := strconv.Atoi(v)
				if err != nil || n < -1 {
					return fmt.Errorf("%q is not a uid or -1", v)
				}
				c.ExcludeUID = n
				return nil
			}},
		{"drain-timeout", "MESHLET_DRAIN_TIMEOUT", "10s", "how long in-flight requests may finish after SIGTERM",
			func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return fmt.Errorf("%q is not a duration such as 10s", v)
				}
				c.DrainTimeout = d
				return nil
			}},
		{"advertise-addr", "MESHLET_ADVERTISE_ADDR", registration.DefaultAddressTemplate,
			"go-sockaddr template of the address the app is registered with, e.g. {{ GetInterfaceIP \"eth0\" }}",
			func(c *Config, v string) error {
				if err := registration.CheckTemplate(v); err != nil {
					return err
				}
				c.AdvertiseAddr = v
				return nil
			}},
		{"drain-period", "MESHLET_DRAIN_PERIOD", "5s", "after SIGTERM, how long the app's check is critical before it is deregistered, while meshlet keeps serving",
			func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return fmt.Errorf("%q is not a duration such as 5s", v)
				}
				c.DrainPeriod = d
				return nil
			}},
		{"exit-when-app-gone", "MESHLET_EXIT_WHEN_APP_GONE", "true", "stop, deregister and exit 0 when the namespace loses every interface but loopback (the app's container stopped)",
			func(c *Config, v string) error {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return fmt.Errorf("%q is not true or false", v)
				}
				c.ExitWhenAppGone = b
				return nil
			}},
		{"policy", "MESHLET_POLICY", "", "traffic policy overriding the services' Consul meta: SERVICE:KEY=VALUE,... (KEY: a meta key without meshlet-; * for every service)",
			func(c *Config, v string) error {
				ov, err := upstream.ParseOverrides(v)
				if err != nil {
					return err
				}
				c.Policy = ov
				return nil
			}},
		{"sticky-key", "MESHLET_STICKY_KEY", "", "secret that keys the sticky cookie values, the same on every sidecar (empty: values are stable and opaque, not secret)",
			func(c *Config, v string) error {
				if v != "" && len(v) < 16 {
					return errors.New("must be at least 16 characters, or empty")
				}
				c.StickyKey = v
				return nil
			}},
		{"state-dir", "MESHLET_STATE_DIR", "/var/lib/meshlet", "directory where the last good instances are saved, so a restart during a Consul outage still routes (empty: not saved)",
			func(c *Config, v string) error {
				c.StateDir = v
				return nil
			}},
		{"max-stale", "MESHLET_MAX_STALE", "0", "how long to keep routing on the last good instances while Consul does not answer (0: no limit)",
			func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return fmt.Errorf("%q is not a duration such as 10m, or 0", v)
				}
				c.MaxStale = d
				return nil
			}},
		{"connect-timeout", "MESHLET_CONNECT_TIMEOUT", upstream.DefaultDialTimeout.String(), "how long a connection to an instance may take to be made; the first that takes longer ejects the instance until it accepts connections again",
			func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d <= 0 {
					return fmt.Errorf("%q is not a positive duration such as 2s", v)
				}
				c.ConnectTimeout = d
				return nil
			}},
		{"log-level", "MESHLET_LOG_LEVEL", "info", "debug, info, warn or error",
			func(c *Config, v string) error {
				return c.LogLevel.UnmarshalText([]byte(v))
			}},
		{"access-log", "MESHLET_ACCESS_LOG", "", "one JSON line per request to stdout, stderr or a file (default: none)",
			func(c *Config, v string) error {
				c.AccessLog = v
				return nil
			}},
		{"log-format", "MESHLET_LOG_FORMAT", "text", "text or json",
			func(c *Config, v string) error {
				if v != "text" && v != "json" {
					return fmt.Errorf("%q is not text or json", v)
				}
				c.LogFormat = v
				return nil
			}},
		{"mtls", "MESHLET_MTLS", string(upstream.MTLSPermissive), "Consul Connect mutual TLS: off, permissive (mTLS to instances that offer it, the app's port still takes plaintext) or strict (mTLS only)",
			func(c *Config, v string) error {
				m, err := upstream.ParseMTLSMode(v)
				if err != nil {
					return err
				}
				c.MTLS = m
				return nil
			}},
		{"mtls-identity", "MESHLET_MTLS_IDENTITY", "", "service name whose Connect identity a client-only sidecar (no SERVICE_NAME) presents (empty: such a sidecar connects in plaintext)",
			func(c *Config, v string) error {
				v = strings.TrimSpace(v)
				if v != "" && !validServiceName(v) {
					return fmt.Errorf("%q is not a service name (letters, digits, - and _)", v)
				}
				c.MTLSIdentity = v
				return nil
			}},
		{"inbound-port", "MESHLET_INBOUND_PORT", "21000", "port of the mTLS inbound listener on the app's registered address, registered as the app's Connect sidecar (with mTLS on and an app registered)",
			func(c *Config, v string) error {
				n, err := strconv.ParseUint(v, 10, 16)
				if err != nil || n == 0 {
					return fmt.Errorf("%q is not a port from 1 to 65535", v)
				}
				c.InboundPort = uint16(n)
				return nil
			}},
		{"dns-ttl", "MESHLET_DNS_TTL", (dns.DefaultTTL * time.Second).String(), "TTL of meshlet's DNS answers for mesh names and VIPs, and of its NXDOMAIN answers (SOA minimum)",
			func(c *Config, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil || d < time.Second || d > time.Hour || d%time.Second != 0 {
					return fmt.Errorf("%q is not a whole number of seconds from 1s to 1h, such as 5s", v)
				}
				c.DNSTTL = d
				return nil
			}},
	}
}

func addrPort(field func(*Config) *netip.AddrPort) func(*Config, string) error {
	return func(c *Config, v string) error {
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return fmt.Errorf("%q is not IP:PORT", v)
		}
		*field(c) = ap
		return nil
	}
}

// ParseConfig reads the flags of `meshlet run` from args and the
// environment from getenv. Errors are one line and name the setting.
func ParseConfig(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	consulDefault := getenv("CONSUL_HTTP_ADDR")
	if consulDefault == "" {
		consulDefault = "127.0.0.1:8500"
	}
	all := settings(consulDefault)
	fs := flag.NewFlagSet("meshlet run", flag.ContinueOnError)
	fs.SetOutput(usage)
	values := make([]*string, len(all))
	for i, s := range all {
		values[i] = fs.String(s.flag, s.def, fmt.Sprintf("%s (env %s)", s.help, s.env))
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	c := Config{from: map[string]string{}}
	for i, s := range all {
		v, from := *values[i], "--"+s.flag
		if !set[s.flag] {
			if ev := getenv(s.env); ev != "" {
				v, from = ev, s.env
			}
		}
		if err := s.parse(&c, v); err != nil {
			return Config{}, fmt.Errorf("%s: %w", from, err)
		}
		c.from[s.flag] = from
	}
	return c, c.validate()
}

// source names what set a flag's value (the flag, or its variable), for
// errors found after parsing.
func (c Config) source(flag string) string {
	if from, ok := c.from[flag]; ok {
		return from
	}
	return "--" + flag
}

// LoadRegistration reads the registrator-style SERVICE_* variables of
// environ and, when they name an app to register, evaluates the advertise
// address. Errors are one line and name the variable or flag at fault.
func (c *Config) LoadRegistration(environ []string, hostname string) error {
	services, err := registration.Parse(environ, hostname)
	if err != nil {
		return err
	}
	if len(services) == 0 {
		return nil
	}
	addr, err := registration.Address(c.AdvertiseAddr)
	if err != nil {
		return fmt.Errorf("%s: %w", c.source("advertise-addr"), err)
	}
	c.Services, c.Advertise = services, addr
	return nil
}

// validServiceName accepts what a Connect identity's service path can
// carry: the characters Consul's DNS-compatible service names use.
func validServiceName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return s != "" && len(s) <= 63
}

// mtlsIdentity returns the service whose identity meshlet presents over
// mTLS, and where it comes from; "" when there is none (mTLS off, or a
// client-only sidecar without --mtls-identity). The registered app's name
// wins: a sidecar is its app.
func (c Config) mtlsIdentity() (name, from string) {
	if c.MTLS == upstream.MTLSOff {
		return "", ""
	}
	if len(c.Services) > 0 {
		return c.Services[0].Name, "the registered app"
	}
	if c.MTLSIdentity != "" {
		return c.MTLSIdentity, c.source("mtls-identity")
	}
	return "", ""
}

// checkMTLS checks what the mTLS mode needs once the registration is
// known: strict mode with no identity could make no connection at all.
func (c Config) checkMTLS() error {
	if c.MTLS != upstream.MTLSStrict {
		return nil
	}
	if name, _ := c.mtlsIdentity(); name == "" {
		return fmt.Errorf("%s: strict needs an identity to present: register the app (SERVICE_NAME) or set --mtls-identity (MESHLET_MTLS_IDENTITY)", c.source("mtls"))
	}
	return nil
}

// validate checks what no single setting can: how they fit together.
func (c Config) validate() error {
	for _, l := range []struct {
		name string
		ap   netip.AddrPort
	}{{"--dns-listen", c.DNSListen}, {"--outbound-listen", c.OutboundListen}, {"--admin-listen", c.AdminListen}} {
		if c.VIPCIDR.Contains(l.ap.Addr()) {
			return fmt.Errorf("--vip-cidr: %s contains %s address %s, whose traffic would be redirected to meshlet", c.VIPCIDR, l.name, l.ap.Addr())
		}
	}
	if c.Intercept {
		if c.Mark == 0 && c.ExcludeUID < 0 {
			return errors.New("--mark: 0 needs --exclude-uid, or meshlet would intercept its own connections")
		}
		if !c.DNSListen.Addr().IsLoopback() && !c.DNSListen.Addr().IsUnspecified() {
			return fmt.Errorf("--dns-listen: %s must be a loopback or unspecified address for the redirect to reach it", c.DNSListen)
		}
		if !c.OutboundListen.Addr().IsLoopback() && !c.OutboundListen.Addr().IsUnspecified() {
			return fmt.Errorf("--outbound-listen: %s must be a loopback or unspecified address for the redirect to reach it", c.OutboundListen)
		}
	}
	if c.DNSListen.Port() == 0 || c.OutboundListen.Port() == 0 {
		if c.Intercept {
			return errors.New("--dns-listen/--outbound-listen: port 0 cannot be a redirect target")
		}
	}
	return nil
}
