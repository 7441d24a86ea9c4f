package metrics

import "github.com/prometheus/client_golang/prometheus"

// DNSKind is the kind of a DNS query, the kind label of
// meshlet_dns_queries_total.
type DNSKind int

// The kinds of DNS queries.
const (
	DNSMesh      DNSKind = iota // a mesh name answered from the mesh (a VIP, or an empty answer)
	DNSNXDomain                 // a mesh name that is no service
	DNSForwarded                // any other name, forwarded to the app's nameservers
	DNSServFail                 // a query meshlet could not answer itself (lookup error, overload)
	numDNSKinds
)

func (k DNSKind) String() string {
	switch k {
	case DNSMesh:
		return "mesh"
	case DNSNXDomain:
		return "nxdomain"
	case DNSForwarded:
		return "forwarded"
	case DNSServFail:
		return "servfail"
	}
	return "unknown"
}

// DNS holds the pre-resolved DNS series.
type DNS struct {
	kinds           [numDNSKinds]prometheus.Counter
	forwardFailures prometheus.Counter
}

// DNS returns the DNS handles; nil for a nil *Metrics.
func (m *Metrics) DNS() *DNS {
	if m == nil {
		return nil
	}
	return &m.dns
}

// Query counts one query of kind k.
func (d *DNS) Query(k DNSKind) {
	if d == nil || k < 0 || k >= numDNSKinds {
		return
	}
	d.kinds[k].Inc()
}

// ForwardFailed counts a forwarded query that no nameserver answered.
func (d *DNS) ForwardFailed() {
	if d != nil {
		d.forwardFailures.Inc()
	}
}
