package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// mTLS on Consul Connect: the inbound listener's refused handshakes and
// the leaf certificate's remaining life. The agent wires them with
// inbound.Config.Refused and certs.Manager.Snapshot once it runs mTLS.

// mtlsReasons are the reasons inbound refuses a handshake for; any other
// counts as "tls", so the label stays bounded.
var mtlsReasons = [...]string{"tls", "intentions", "not-ready", "consul", "closed-before-handshake", "handshake-timeout"}

// HandshakeFailed counts an inbound mTLS handshake refused for reason.
func (m *Metrics) HandshakeFailed(reason string) {
	if m == nil {
		return
	}
	for i, r := range mtlsReasons {
		if r == reason {
			m.mtlsFailures[i].Inc()
			return
		}
	}
	m.mtlsFailures[0].Inc()
}

// WatchLeaf makes every scrape report the seconds left before the app's
// leaf certificate expires, as meshlet_mtls_leaf_expiry_seconds (nothing
// while there is no leaf). Call it once.
func (m *Metrics) WatchLeaf(notAfter func() (time.Time, bool)) {
	m.reg.MustRegister(&scrapeCollector{
		descs: []*prometheus.Desc{leafExpiryDesc},
		collect: func(ch chan<- prometheus.Metric) {
			if t, ok := notAfter(); ok {
				ch <- prometheus.MustNewConstMetric(leafExpiryDesc, prometheus.GaugeValue, time.Until(t).Seconds())
			}
		},
	})
}

var leafExpiryDesc = prometheus.NewDesc(namespace+"_mtls_leaf_expiry_seconds",
	"Seconds until the app's Connect leaf certificate expires (negative once expired).", nil, nil)

func (m *Metrics) newMTLS() {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "mtls_handshake_failures_total",
		Help: "Inbound mTLS handshakes refused, by reason: tls, intentions, not-ready, consul, closed-before-handshake, handshake-timeout."},
		[]string{"reason"})
	m.reg.MustRegister(v)
	for i, r := range mtlsReasons {
		m.mtlsFailures[i] = v.WithLabelValues(r)
	}
}
