package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Balance policies.
const (
	BalanceRoundRobin   = "round-robin"
	BalanceLeastRequest = "least-request"
)

// MetaPrefix starts the Consul service meta keys meshlet reads: the key
// "sticky" of a policy is the meta key "meshlet-sticky".
const MetaPrefix = "meshlet-"

// Policy is how the sidecar treats one service: stickiness, balancing,
// retries, timeouts and passive health. It is derived from the service's
// meta in Consul, so every caller's sidecar treats the service alike, and
// from the caller's overrides.
type Policy struct {
	Sticky       bool          // pin clients to an instance with a cookie
	CookieName   string        // the sticky cookie's name
	CookieMaxAge time.Duration // 0: a session cookie

	Balance string // BalanceRoundRobin or BalanceLeastRequest

	Retries        int           // extra attempts on other instances, when safe
	Timeout        time.Duration // whole request, retries included; 0: none
	TryTimeout     time.Duration // each attempt, until the response headers; 0: none
	RetryBudget    float64       // retries allowed as a share of requests
	RetryMinPerSec float64       // retries allowed per second whatever the traffic

	EjectAfter    int           // consecutive failures that eject an instance; 0: never
	Eject5xx      bool          // a 5xx answer counts as a failure
	EjectTime     time.Duration // base ejection time, multiplied by the ejection count
	EjectMaxShare float64       // most instances ejected at once, as a share (never all)

	Panic bool // route to every registered instance when none is passing

	// Protocol is what the service speaks, when its meta or the caller
	// says so (ProtocolTCP, ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC);
	// "": unknown, the app's first bytes tell.
	Protocol string
}

// Protocol hints (the key "protocol"): tcp skips sniffing; http2 and grpc
// make the HTTP/2 front-end speak h2c to the instances.
const (
	ProtocolTCP   = "tcp"
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
)

// SpeaksHTTP2 reports whether the service's instances are declared to
// take h2c (protocol http2 or grpc).
func (p *Policy) SpeaksHTTP2() bool {
	return p.Protocol == ProtocolHTTP2 || p.Protocol == ProtocolGRPC
}

// String writes the policy as override entries (see ParseOverrides),
// for logs and the admin state.
func (p Policy) String() string {
	sticky := "none"
	if p.Sticky {
		sticky = "cookie"
	}
	return fmt.Sprintf("sticky=%s,sticky-cookie=%s,sticky-max-age=%v,balance=%s,retries=%d,timeout=%v,try-timeout=%v,"+
		"retry-budget=%g%%,retry-min=%g,eject-after=%d,eject-5xx=%t,eject-time=%v,eject-max=%g%%,panic=%t,protocol=%s",
		sticky, p.CookieName, p.CookieMaxAge, p.Balance, p.Retries, p.Timeout, p.TryTimeout,
		p.RetryBudget*100, p.RetryMinPerSec, p.EjectAfter, p.Eject5xx, p.EjectTime, p.EjectMaxShare*100, p.Panic, p.protocolName())
}

// DefaultPolicy is the policy of a service without meta or overrides.
func DefaultPolicy(service string) Policy {
	return Policy{
		CookieName:     defaultCookieName(service),
		Balance:        BalanceRoundRobin,
		Retries:        2,
		RetryBudget:    0.2,
		RetryMinPerSec: 5,
		EjectAfter:     5,
		EjectTime:      10 * time.Second,
		EjectMaxShare:  0.5,
	}
}

// defaultCookieName is "meshlet-" and the service name, with characters a
// cookie name cannot hold replaced.
func defaultCookieName(service string) string {
	b := []byte("meshlet-" + service)
	for i, c := range b {
		if !isTokenChar(c) {
			b[i] = '_'
		}
	}
	return string(b[:min(len(b), maxCookieNameLen)])
}

// policyKey is one setting of a Policy, as meta key (with MetaPrefix) and
// as override key.
type policyKey struct {
	name  string
	parse func(p *Policy, v string) error
}

// policyKeys lists the settings in documentation order. A function, not a
// package variable, so that nothing global can be changed.
func policyKeys() []policyKey {
	return []policyKey{
		{"sticky", func(p *Policy, v string) error {
			switch strings.ToLower(v) {
			case "cookie":
				p.Sticky = true
			case "none", "off":
				p.Sticky = false
			default:
				return fmt.Errorf("%q is not cookie or none", v)
			}
			return nil
		}},
		{"sticky-cookie", func(p *Policy, v string) error {
			if v == "" || len(v) > maxCookieNameLen || strings.IndexFunc(v, func(r rune) bool { return r > 127 || !isTokenChar(byte(r)) }) >= 0 {
				return fmt.Errorf("%q is not a cookie name (1 to %d letters, digits and !#$%%&'*+-.^_`|~)", v, maxCookieNameLen)
			}
			p.CookieName = v
			return nil
		}},
		{"sticky-max-age", durationKey(func(p *Policy) *time.Duration { return &p.CookieMaxAge }, 0, 10*365*24*time.Hour)},
		{"balance", func(p *Policy, v string) error {
			switch strings.ToLower(v) {
			case BalanceRoundRobin, BalanceLeastRequest:
				p.Balance = strings.ToLower(v)
			default:
				return fmt.Errorf("%q is not %s or %s", v, BalanceRoundRobin, BalanceLeastRequest)
			}
			return nil
		}},
		{"retries", intKey(func(p *Policy) *int { return &p.Retries }, 0, 10)},
		{"timeout", durationKey(func(p *Policy) *time.Duration { return &p.Timeout }, 0, 24*time.Hour)},
		{"try-timeout", durationKey(func(p *Policy) *time.Duration { return &p.TryTimeout }, 0, 24*time.Hour)},
		{"retry-budget", percentKey(func(p *Policy) *float64 { return &p.RetryBudget })},
		{"retry-min", func(p *Policy, v string) error {
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "/s"), 64)
			if err != nil || f < 0 || f > 10000 || math.IsNaN(f) {
				return fmt.Errorf("%q is not a number of retries per second (0 to 10000)", v)
			}
			p.RetryMinPerSec = f
			return nil
		}},
		{"eject-after", intKey(func(p *Policy) *int { return &p.EjectAfter }, 0, 10000)},
		{"eject-5xx", boolKey(func(p *Policy) *bool { return &p.Eject5xx })},
		{"eject-time", durationKey(func(p *Policy) *time.Duration { return &p.EjectTime }, time.Millisecond, time.Hour)},
		{"eject-max", percentKey(func(p *Policy) *float64 { return &p.EjectMaxShare })},
		{"panic", boolKey(func(p *Policy) *bool { return &p.Panic })},
		{"protocol", func(p *Policy, v string) error {
			switch v = strings.ToLower(v); v {
			case ProtocolTCP, ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC:
				p.Protocol = v
			case "auto":
				p.Protocol = ""
			default:
				return fmt.Errorf("%q is not tcp, http, http2, grpc or auto", v)
			}
			return nil
		}},
	}
}

func (p Policy) protocolName() string { return cmp.Or(p.Protocol, "auto") }

// Protocol returns the protocol hint of t's service (Policy.Protocol),
// waiting for Consul's first answer for it at most
// Config.FirstAnswerTimeout; "" while unknown. The dispatcher asks it
// before it reads a byte of a connection.
func (m *Mesh) Protocol(ctx context.Context, t *Target) string {
	t.watch.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	if v := t.watch.view.Load(); v != nil {
		return v.policy.Protocol
	}
	return ""
}

func findPolicyKey(name string) (policyKey, bool) {
	for _, k := range policyKeys() {
		if k.name == name {
			return k, true
		}
	}
	return policyKey{}, false
}

func policyKeyNames() string {
	var names []string
	for _, k := range policyKeys() {
		names = append(names, k.name)
	}
	return strings.Join(names, ", ")
}

// parseDuration reads "1500ms", "30s", "1h", or a bare number of seconds.
func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 || n > math.MaxInt64/int64(time.Second) {
			return 0, errors.New("out of range")
		}
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(v)
}

func durationKey(field func(*Policy) *time.Duration, lo, hi time.Duration) func(*Policy, string) error {
	return func(p *Policy, v string) error {
		d, err := parseDuration(v)
		if err != nil || d < lo || d > hi {
			return fmt.Errorf("%q is not a duration from %v to %v (e.g. 1500ms, 30s, 1h; a bare number is seconds)", v, lo, hi)
		}
		*field(p) = d
		return nil
	}
}

func intKey(field func(*Policy) *int, lo, hi int) func(*Policy, string) error {
	return func(p *Policy, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%q is not a whole number from %d to %d", v, lo, hi)
		}
		*field(p) = n
		return nil
	}
}

func percentKey(field func(*Policy) *float64) func(*Policy, string) error {
	return func(p *Policy, v string) error {
		f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
		if err != nil || f < 0 || f > 100 || math.IsNaN(f) {
			return fmt.Errorf("%q is not a percentage from 0%% to 100%%", v)
		}
		*field(p) = f / 100
		return nil
	}
}

func boolKey(field func(*Policy) *bool) func(*Policy, string) error {
	return func(p *Policy, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*field(p) = b
		return nil
	}
}

// derivePolicy decides a service's policy from the meta of its registered
// instances and the caller's overrides. Meta is per instance in Consul, so
// instances can disagree (during a rolling change, say): for each key the
// most common value wins, an instance without the key voting for the
// default, and a tie goes to the value of the instance that sorts first by
// node and ID. Every sidecar that sees the same instances decides the same.
// Precedence: the caller's override for the service, then the meta, then
// the caller's "*" override, then the default. Invalid meta values are
// ignored and returned as problems, for the log.
func derivePolicy(service string, metas []map[string]string, ov Overrides) (Policy, []string) {
	p := DefaultPolicy(service)
	var problems []string
	apply := func(k policyKey, v, from string) {
		if err := k.parse(&p, v); err != nil {
			problems = append(problems, fmt.Sprintf("%s%s: %v", from, k.name, err))
		}
	}
	for _, k := range policyKeys() {
		if v, ok := ov.all[k.name]; ok {
			apply(k, v, "override *:")
		}
		if v, ok := majority(metas, MetaPrefix+k.name); ok {
			apply(k, v, "meta "+MetaPrefix)
		}
		if v, ok := ov.services[service][k.name]; ok {
			apply(k, v, "override "+service+":")
		}
	}
	return p, problems
}

// majority returns the most common value of key over metas (absent counts
// as a value of its own) and whether that winner is a present value. metas
// must be in set order, which decides ties.
func majority(metas []map[string]string, key string) (string, bool) {
	type tally struct {
		value   string
		present bool
		votes   int
		first   int
	}
	var tallies []tally
	for i, m := range metas {
		v, present := m[key]
		v = strings.TrimSpace(v)
		j := slices.IndexFunc(tallies, func(t tally) bool { return t.value == v && t.present == present })
		if j < 0 {
			tallies = append(tallies, tally{value: v, present: present, first: i})
			j = len(tallies) - 1
		}
		tallies[j].votes++
	}
	if len(tallies) == 0 {
		return "", false
	}
	best := slices.MaxFunc(tallies, func(a, b tally) int {
		return cmp.Or(cmp.Compare(a.votes, b.votes), cmp.Compare(b.first, a.first))
	})
	return best.value, best.present
}
