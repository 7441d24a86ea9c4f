package dns

import (
	"context"
	"errors"
	"net/netip"
)

// Services is what the server needs to answer mesh names. The agent
// implements it; tests use a fake.
//
// The server calls LookupVIP on every mesh query, so it should answer from
// memory and return quickly: the ctx it gets lives as long as the server and
// is cancelled by [Server.Shutdown], it carries no per-query deadline.
type Services interface {
	// LookupVIP returns the virtual IP that stands for the service (name is
	// lower-case, suffix stripped, e.g. "web"), or for the subset of a
	// service's instances that carry a tag ("v2.web": tag, dot, service;
	// found=false when no instance has the tag).
	// found=false with err=nil means the service does not exist (answer NXDOMAIN).
	// A non-nil err means it cannot be told now (e.g. Consul has not answered
	// yet): answer SERVFAIL. An err that wraps ErrNotKnownYet means the
	// answer is on its way: the server waits for it off the read loop
	// (NameAwaiter) and asks again.
	LookupVIP(ctx context.Context, service string) (vip netip.Addr, found bool, err error)
	// LookupPorts returns the distinct ports, ascending, of the instances
	// of a service (or subset, named as for LookupVIP) that the server
	// has just found with LookupVIP: for SRV answers. Unlike LookupVIP it
	// may wait, until ctx ends, for Consul's first answer about the
	// service. No port (no instance known) is no error: the answer has
	// no data.
	LookupPorts(ctx context.Context, service string) ([]uint16, error)
	// LookupName returns the name ("web", "v2.web") that vip stands for,
	// for reverse (PTR) lookups; found=false for any other address, whose
	// reverse name is forwarded. It is asked on the UDP read loop too, so
	// it must not block.
	LookupName(ctx context.Context, vip netip.Addr) (name string, found bool)
}

// ErrNotKnownYet, wrapped in an error of LookupVIP, says that the name must
// be asked of Consul before it can be answered, and that it is being asked.
var ErrNotKnownYet = errors.New("mesh name not known yet")

// NameAwaiter is what Services implement when LookupVIP may answer
// ErrNotKnownYet: AwaitName blocks until LookupVIP can answer for the name
// (service or subset, as for LookupVIP), or ctx ends. The server calls it
// from a goroutine of its own, never from the UDP read loop.
type NameAwaiter interface {
	AwaitName(ctx context.Context, service string) error
}
