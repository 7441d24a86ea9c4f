package upstream

import (
	"cmp"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// Endpoint is one passing instance of a service. Its Tags and Meta are
// shared with the set it came from and must not be modified.
type Endpoint struct {
	ID   string // Consul service ID, unique on its node
	Node string // Consul node name
	// Addr is "host:port" to dial. Host is an IP address in canonical form,
	// or a DNS name when Consul was given one.
	Addr string
	Tags []string
	Meta map[string]string
}

// EndpointSet is an immutable snapshot of a service's healthy instances,
// ordered by node and ID so that every sidecar sees the same order.
// A nil *EndpointSet is valid and empty.
type EndpointSet struct {
	endpoints []Endpoint
}

// newEndpointSet sorts eps and takes ownership of it.
func newEndpointSet(eps []Endpoint) *EndpointSet {
	slices.SortFunc(eps, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
	})
	return &EndpointSet{endpoints: eps}
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

// after returns the endpoint that follows the one with the given node and
// ID, wrapping around, if it is a different one: where a failed attempt
// moves on to.
func (s *EndpointSet) after(e Endpoint) (Endpoint, bool) {
	n := s.Len()
	if n < 2 {
		return Endpoint{}, false
	}
	for i, cand := range s.endpoints {
		if cand.ID == e.ID && cand.Node == e.Node {
			return s.endpoints[(i+1)%n], true
		}
	}
	// The set changed under the request: any member is a different instance.
	return s.endpoints[0], s.endpoints[0].Addr != e.Addr
}

// equal reports whether both sets hold the same endpoints in the same order.
func (s *EndpointSet) equal(o *EndpointSet) bool {
	if s.Len() != o.Len() {
		return false
	}
	for i := range s.Len() {
		a, b := s.endpoints[i], o.endpoints[i]
		if a.ID != b.ID || a.Node != b.Node || a.Addr != b.Addr ||
			!slices.Equal(a.Tags, b.Tags) || !maps.Equal(a.Meta, b.Meta) {
			return false
		}
	}
	return true
}

// endpointsFromHealth turns Consul's answer into endpoints. Entries that
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
		eps = append(eps, Endpoint{
			ID:   e.Service.ID,
			Node: node,
			Addr: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Tags: slices.Clone(e.Service.Tags),
			Meta: maps.Clone(e.Service.Meta),
		})
	}
	return eps, skipped
}
