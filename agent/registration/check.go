package registration

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of the check settings, chosen like Kubernetes probes but with a
// shorter interval, since a mesh should stop sending to a broken instance
// within seconds rather than half a minute.
const (
	DefaultInterval         = 5 * time.Second
	DefaultTimeout          = 2 * time.Second
	DefaultSuccessThreshold = 1
	DefaultFailureThreshold = 3
	DefaultDeregisterAfter  = time.Minute
	// minTTL keeps a short interval from making the TTL so tight that a
	// slow Consul write or a GC pause lets it lapse on a live sidecar.
	minTTL = 5 * time.Second
)

// ProbeKind is how meshlet checks the app.
type ProbeKind int

const (
	// ProbeTCP connects to the app's port (the default).
	ProbeTCP ProbeKind = iota
	// ProbeHTTP sends GET HTTPPath; 2xx and 3xx are healthy.
	ProbeHTTP
	// ProbeNone does not probe: the check passes while meshlet runs.
	ProbeNone
)

func (k ProbeKind) String() string {
	switch k {
	case ProbeHTTP:
		return "http"
	case ProbeNone:
		return "none"
	default:
		return "tcp"
	}
}

// Check is how the app is probed and how the result reaches Consul.
type Check struct {
	Probe    ProbeKind
	HTTPPath string // path and query of the HTTP probe

	InitialDelay     time.Duration // before the first probe; the check is critical until a probe passes
	Interval         time.Duration // between the starts of two probes
	Timeout          time.Duration // of one probe
	SuccessThreshold int           // consecutive passes that turn the check passing
	FailureThreshold int           // consecutive failures that turn it critical

	// TTL of the Consul check: if meshlet stops updating it (it hangs or
	// died), Consul turns it critical after this long.
	TTL time.Duration
	// DeregisterAfter removes a registration whose check stayed critical
	// this long (Consul's DeregisterCriticalServiceAfter): the backstop for
	// a sidecar that died without deregistering. 0: never.
	DeregisterAfter time.Duration
}

// checkSettings gathers the SERVICE_CHECK_* values of one service.
type checkSettings struct {
	http                                                  string
	tcp                                                   *bool
	interval, timeout, initialDelay, ttl, deregisterAfter *time.Duration
	successThreshold, failureThreshold                    int
	tcpVar, ttlVar                                        string // variable names, for errors about how settings fit
}

// set takes one check_* key (without SERVICE_) and its variable.
func (cs *checkSettings) set(key string, vr variable) error {
	v := vr.value
	switch key {
	case "check_http":
		u, err := url.ParseRequestURI(v)
		if err != nil || !strings.HasPrefix(v, "/") || u.Host != "" || strings.ContainsAny(v, " \t\r\n") {
			return fmt.Errorf("%q is not a path such as /health", v)
		}
		cs.http = v
	case "check_tcp":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		cs.tcp, cs.tcpVar = &b, vr.name
	case "check_interval":
		return setDuration(&cs.interval, v, false)
	case "check_timeout":
		return setDuration(&cs.timeout, v, false)
	case "check_initial_delay":
		return setDuration(&cs.initialDelay, v, true)
	case "check_ttl":
		cs.ttlVar = vr.name
		return setDuration(&cs.ttl, v, false)
	case "check_deregister_after":
		return setDuration(&cs.deregisterAfter, v, true)
	case "check_success_threshold":
		return setCount(&cs.successThreshold, v)
	case "check_failure_threshold":
		return setCount(&cs.failureThreshold, v)
	default:
		return errors.New("not supported by meshlet (it probes the app itself: use SERVICE_CHECK_HTTP or SERVICE_CHECK_TCP)")
	}
	return nil
}

func setDuration(dst **time.Duration, v string, zeroOK bool) error {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 || (d == 0 && !zeroOK) {
		if zeroOK {
			return fmt.Errorf("%q is not a duration such as 5s or 0s", v)
		}
		return fmt.Errorf("%q is not a positive duration such as 5s", v)
	}
	*dst = &d
	return nil
}

func setCount(dst *int, v string) error {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 1000 {
		return fmt.Errorf("%q is not a count from 1 to 1000", v)
	}
	*dst = n
	return nil
}

// check applies the defaults and checks how the settings fit together.
func (cs *checkSettings) check() (Check, error) {
	c := Check{
		Interval:         DefaultInterval,
		Timeout:          DefaultTimeout,
		SuccessThreshold: DefaultSuccessThreshold,
		FailureThreshold: DefaultFailureThreshold,
		DeregisterAfter:  DefaultDeregisterAfter,
	}
	switch {
	case cs.http != "" && cs.tcp != nil && *cs.tcp:
		return Check{}, fmt.Errorf("%s: true, and SERVICE_CHECK_HTTP is set too: choose one probe", cs.tcpVar)
	case cs.http != "":
		c.Probe, c.HTTPPath = ProbeHTTP, cs.http
	case cs.tcp != nil && !*cs.tcp:
		c.Probe = ProbeNone
	}
	for _, d := range []struct {
		src *time.Duration
		dst *time.Duration
	}{{cs.interval, &c.Interval}, {cs.timeout, &c.Timeout}, {cs.initialDelay, &c.InitialDelay}, {cs.deregisterAfter, &c.DeregisterAfter}} {
		if d.src != nil {
			*d.dst = *d.src
		}
	}
	if cs.successThreshold > 0 {
		c.SuccessThreshold = cs.successThreshold
	}
	if cs.failureThreshold > 0 {
		c.FailureThreshold = cs.failureThreshold
	}
	// Between two updates of a live sidecar pass at most an interval and a
	// probe's timeout; three of those is comfortable.
	gap := c.Interval + c.Timeout
	c.TTL = max(3*gap, minTTL)
	if cs.ttl != nil {
		if *cs.ttl <= gap {
			return Check{}, fmt.Errorf("%s: %v must exceed the check interval plus its timeout (%v), or a live sidecar would let it lapse", cs.ttlVar, *cs.ttl, gap)
		}
		c.TTL = *cs.ttl
	}
	return c, nil
}
