package upstream

import (
	"cmp"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/hashicorp/consul/api"
)

// Endpoint is one instance of a service. Its Tags and Meta are shared with
// the set it came from and must not be modified.
type Endpoint struct {
	ID   string `json:"id"`   // Consul service ID, unique on its node
	Node string `json:"node"` // Consul node name
	// Addr is "host:port" to dial. Host is an IP address in canonical form,
	// or a DNS name when Consul was given one.
	Addr string            `json:"addr"`
	Tags []string          `json:"tags,omitempty"`
	Meta map[string]string `json:"meta,omitempty"`
	// Weight is Consul's weight for the instance's state (Weights.Passing,
	// or Weights.Warning); at least 1.
	Weight int `json:"weight"`
	// Status is the worst of the instance's checks and its node's:
	// passing, warning or critical.
	Status string `json:"status"`
	// MTLS: Addr is the instance's Connect sidecar, reached over mTLS,
	// and AppAddr the app's own address (connect.go).
	MTLS    bool   `json:"mtls,omitempty"`
	AppAddr string `json:"app_addr,omitempty"`
}

// EndpointSet is an immutable snapshot of instances a request may go to,
// ordered by node and ID so that every sidecar sees the same order, with
// what the selectors need precomputed. A nil *EndpointSet is valid and
// empty.
type EndpointSet struct {
	endpoints []Endpoint
	hosts     []*hostState // runtime state, parallel to endpoints
	// order is the weighted round-robin sequence of indexes; nil when all
	// weights are equal (then it is 0, 1, ..., n-1).
	order []int32
	// sticky maps cookie values to indexes; nil unless the service is sticky.
	sticky map[StickyID]int
	ids    []StickyID // cookie value of each endpoint, when sticky
	codec  *cookieCodec

	ejectMu sync.Mutex // serialises ejection decisions (rare)
}

// newEndpointSet sorts eps, takes ownership of it and gives every endpoint
// fresh runtime state; for tests and sets that need no shared state.
func newEndpointSet(eps []Endpoint) *EndpointSet {
	return buildSet(eps, nil, nil)
}

// buildSet sorts eps and takes ownership of it. Runtime state comes from
// reg (fresh state when nil); codec, when not nil, makes the set sticky.
func buildSet(eps []Endpoint, reg *hostRegistry, codec *cookieCodec) *EndpointSet {
	sortByNodeID(eps)
	s := &EndpointSet{endpoints: eps, hosts: make([]*hostState, len(eps)), codec: codec}
	for i, e := range eps {
		if reg != nil {
			s.hosts[i] = reg.get(e)
		} else {
			s.hosts[i] = &hostState{}
		}
	}
	s.order = weightedOrder(eps)
	if codec != nil {
		s.sticky = make(map[StickyID]int, len(eps))
		s.ids = make([]StickyID, len(eps))
		for i, e := range eps {
			id := codec.id(e.Node, e.ID)
			s.ids[i] = id
			s.sticky[id] = i
		}
	}
	return s
}

func sortByNodeID(eps []Endpoint) {
	slices.SortFunc(eps, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
	})
}

// Len returns the number of endpoints.
func (s *EndpointSet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.endpoints)
}

// At returns the i-th endpoint; i must be in [0, Len()).
func (s *EndpointSet) At(i int) Endpoint {
	return s.endpoints[i]
}

// Endpoints returns a copy of the endpoints, in set order.
func (s *EndpointSet) Endpoints() []Endpoint {
	if s == nil {
		return nil
	}
	return slices.Clone(s.endpoints)
}

// available reports whether endpoint i is not ejected at now (unix ns).
func (s *EndpointSet) available(i int, now int64) bool {
	return s.hosts[i].available(now)
}

// index returns the position of the endpoint with e's node and ID.
func (s *EndpointSet) index(e Endpoint) (int, bool) {
	for i, cand := range s.endpoints {
		if cand.ID == e.ID && cand.Node == e.Node {
			return i, true
		}
	}
	return -1, false
}

// equal reports whether both sets hold the same endpoints in the same order.
func (s *EndpointSet) equal(o *EndpointSet) bool {
	return endpointsEqual(s.Endpoints(), o.Endpoints())
}

func endpointsEqual(a, b []Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y Endpoint) bool {
		return x.ID == y.ID && x.Node == y.Node && x.Addr == y.Addr && x.Weight == y.Weight &&
			x.Status == y.Status && x.MTLS == y.MTLS && x.AppAddr == y.AppAddr &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}

// endpointsFromHealth turns Consul's answer, every registered instance
// with its checks, into endpoints with their status. Entries that
// cannot be dialled (no address, no port) are returned in skipped, for the
// caller to log, instead of poisoning the set.
func endpointsFromHealth(entries []*api.ServiceEntry) (eps []Endpoint, skipped []string) {
	eps = make([]Endpoint, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		host := e.Service.Address
		node := ""
		if e.Node != nil {
			node = e.Node.Node
			if host == "" {
				host = e.Node.Address
			}
		}
		if host == "" || e.Service.Port <= 0 || e.Service.Port > 65535 {
			skipped = append(skipped, e.Service.ID)
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			host = ip.Unmap().WithZone("").String()
		}
		status := e.Checks.AggregatedStatus()
		weight := e.Service.Weights.Passing
		switch status {
		case api.HealthPassing, api.HealthWarning, api.HealthCritical:
		default: // maintenance, or a status this version does not know
			status = api.HealthCritical
		}
		if status == api.HealthWarning {
			weight = e.Service.Weights.Warning
		}
		eps = append(eps, Endpoint{
			ID:     e.Service.ID,
			Node:   node,
			Addr:   net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Tags:   slices.Clone(e.Service.Tags),
			Meta:   maps.Clone(e.Service.Meta),
			Weight: max(weight, 1),
			Status: status,
		})
	}
	return eps, skipped
}
