package dns

import (
	"context"
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
	// lower-case, suffix stripped, e.g. "web").
	// found=false with err=nil means the service does not exist (answer NXDOMAIN).
	// A non-nil err means it cannot be told now (e.g. Consul has not answered
	// yet): answer SERVFAIL.
	LookupVIP(ctx context.Context, service string) (vip netip.Addr, found bool, err error)
}
