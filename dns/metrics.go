package dns

// QueryKind says how a query was answered, for Metrics.
type QueryKind int

// The kinds of queries Metrics counts.
const (
	QueryMesh      QueryKind = iota // a mesh name answered from the mesh (a VIP, an empty answer, the zone's apex)
	QueryNXDomain                   // a mesh name that is no service
	QueryForwarded                  // a name outside the mesh, forwarded to the app's nameservers
	QueryServFail                   // a query meshlet could not answer (mesh lookup failed, too many forwarding)
)

// Metrics counts the server's queries. Its methods are called on the
// query path, the allocation-free one for mesh names included: they must
// neither block nor allocate. Malformed queries (FORMERR, NOTIMP) are not
// counted.
type Metrics interface {
	// Query counts one query, once, by how it was answered.
	Query(kind QueryKind)
	// ForwardFailed counts a forwarded query that no nameserver answered.
	ForwardFailed()
}

type noMetrics struct{}

func (noMetrics) Query(QueryKind) {}
func (noMetrics) ForwardFailed()  {}
