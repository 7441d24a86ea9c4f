package agent

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshlet/meshlet/dns"
	"github.com/meshlet/meshlet/metrics"
)

// setupMetrics makes the agent's registry and the collectors read at
// scrape time; the parts that count on their hot paths get their handles
// from a.metrics.
func (a *Agent) setupMetrics() {
	a.metrics = metrics.New()
	a.metrics.WatchConsul(a.consulState)
	if a.registrar != nil {
		a.metrics.WatchRegistrations(a.registrationStates)
	}
}

// metricsHandler serves the agent's registry in the Prometheus formats.
func (a *Agent) metricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.Registry(), promhttp.HandlerOpts{
		ErrorLog:            promLogger{a},
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

type promLogger struct{ a *Agent }

func (l promLogger) Println(v ...any) {
	l.a.log.Warn("serving /metrics", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}

// failStaticAge finds the age in a fail-static note of upstream's Status.
var failStaticAge = regexp.MustCompile(`^fail-static: .*?(?:for|confirmed) ([0-9hms.]+)`)

// consulState is meshlet's view of Consul for a scrape, from what
// upstream reports for /readyz.
func (a *Agent) consulState() metrics.ConsulState {
	var st metrics.ConsulState
	if ok, _ := a.mesh.CatalogReady(); !ok {
		st.SinceAnswer = time.Since(a.started) // never answered
	}
	for _, note := range a.mesh.Status() {
		if m := failStaticAge.FindStringSubmatch(note); m != nil {
			st.FailStatic = true
			st.SinceAnswer, _ = time.ParseDuration(m[1])
		}
	}
	return st
}

func (a *Agent) registrationStates() []metrics.Registration {
	states := a.registrar.States()
	out := make([]metrics.Registration, len(states))
	for i, s := range states {
		out[i] = metrics.Registration{Service: s.Name, Status: s.Status, Registered: s.Registered}
	}
	return out
}

// dnsMetrics counts the DNS server's queries.
type dnsMetrics struct{ d *metrics.DNS }

var dnsKinds = [...]metrics.DNSKind{
	dns.QueryMesh:      metrics.DNSMesh,
	dns.QueryNXDomain:  metrics.DNSNXDomain,
	dns.QueryForwarded: metrics.DNSForwarded,
	dns.QueryServFail:  metrics.DNSServFail,
}

func (m dnsMetrics) Query(k dns.QueryKind) {
	if int(k) < len(dnsKinds) {
		m.d.Query(dnsKinds[k])
	}
}

func (m dnsMetrics) ForwardFailed() { m.d.ForwardFailed() }
