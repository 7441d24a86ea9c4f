package agent

import (
	"context"
	"net/netip"
	"strings"
)

// meshNameExists reports whether a mesh name the DNS server asks about
// exists: a service ("web") in Consul's catalog, or a tag subset
// ("v2.web") of one whose instances carry the tag.
func (a *Agent) meshNameExists(name string) (bool, error) {
	if tag, service, ok := strings.Cut(name, "."); ok {
		return a.mesh.SubsetExists(tag, service)
	}
	return a.mesh.ServiceExists(name)
}

// AwaitName implements dns.NameAwaiter: the catalog's answer about a name
// LookupVIP did not know yet.
func (s services) AwaitName(ctx context.Context, name string) error {
	return s.a.mesh.AwaitName(ctx, name)
}

// LookupPorts implements dns.Services: the ports Consul has for the
// instances of a service or subset, for SRV answers.
func (s services) LookupPorts(ctx context.Context, name string) ([]uint16, error) {
	return s.a.mesh.Ports(ctx, name), nil
}

// LookupName implements dns.Services: the service or subset a VIP stands
// for, for PTR answers. It asks only the VIP table, with no side effect:
// it runs on the DNS read loop, and an unassigned VIP (serviceOf would
// scan every name's home address, and assign it) is nobody's yet, so it
// is forwarded like any other reverse name.
func (s services) LookupName(_ context.Context, vip netip.Addr) (string, bool) {
	return s.a.vips.Lookup(vip)
}
