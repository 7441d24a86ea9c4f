package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshlet/meshlet/dns"
	"github.com/meshlet/meshlet/metrics"
)

// setupMetrics adds the collectors read at scrape time to the agent's
// registry (a.metrics, made before the parts that count on their hot
// paths).
func (a *Agent) setupMetrics() {
	a.metrics.WatchConsul(a.consulState)
	a.metrics.WatchServices(a.serviceStates)
	if a.registrar != nil {
		a.metrics.WatchRegistrations(a.registrationStates)
	}
	if a.certs != nil {
		a.metrics.WatchLeaf(func() (time.Time, bool) {
			s := a.certs.Snapshot()
			return s.LeafNotAfter, !s.LeafNotAfter.IsZero()
		})
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

// consulState is meshlet's view of Consul for a scrape.
func (a *Agent) consulState() metrics.ConsulState {
	st := a.mesh.ConsulState()
	return metrics.ConsulState{SinceAnswer: st.SinceAnswer, FailStatic: st.FailStatic, WatchErrors: st.WatchErrors}
}

// serviceStates counts the instances of the services in use for a scrape.
func (a *Agent) serviceStates() []metrics.ServiceState {
	var out []metrics.ServiceState
	for name := range a.vips.Snapshot() {
		st := metrics.ServiceState{Service: name}
		for _, in := range a.mesh.Instances(name) {
			st.Passing++
			if in.EjectedFor > 0 {
				st.Ejected++
			}
		}
		out = append(out, st)
	}
	return out
}

// openAccessLog returns the logger of --access-log (nil for none) and
// what closes its file.
func openAccessLog(where string) (*slog.Logger, func(), error) {
	var w io.Writer
	closer := func() {}
	switch where {
	case "":
		return nil, closer, nil
	case "stdout":
		w = os.Stdout
	case "stderr":
		w = os.Stderr
	default:
		f, err := os.OpenFile(where, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, err
		}
		w, closer = f, func() { f.Close() }
	}
	return slog.New(slog.NewJSONHandler(w, nil)), closer, nil
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
