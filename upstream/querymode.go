package upstream

import (
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// QueryMode is how the watches ask Consul. Which one costs the servers
// least, as the number of sidecars grows, is measured by
// bench/consulscale (BENCHMARKS.md, "Consul at scale").
type QueryMode string

const (
	// QueryDefault sends plain blocking queries, which a Consul client
	// agent (1.10 and later, unless use_streaming_backend is off) serves
	// for a service's instances from its streaming subscription: one per
	// agent and service. The catalog is not asked ?cached: Consul
	// 1.14.11's agent cache of /v1/catalog/services was seen to keep its
	// first answer while services registered (a dev agent, 2026-11-30:
	// the index stayed at its first value, with X-Cache: HIT and Age: 0),
	// so a new service's name would stay NXDOMAIN; bench/harness
	// TestSmoke, which registers a service after meshlet started, failed
	// with the catalog cached.
	QueryDefault QueryMode = ""
	// QueryPlain sends plain blocking queries for both: each sidecar's
	// catalog query is a request to the servers, woken by every change of
	// the catalog.
	QueryPlain QueryMode = "plain"
	// QueryCached asks the agent's cache (?cached) for both (the agent
	// streams the instances when it streams, and otherwise refreshes
	// them with one blocking query per service).
	QueryCached QueryMode = "cached"
	// QueryStale lets any server answer (?stale), not only the leader.
	QueryStale QueryMode = "stale"
)

// ParseQueryMode checks a mode's name.
func ParseQueryMode(s string) (QueryMode, error) {
	switch m := QueryMode(s); m {
	case QueryDefault, QueryPlain, QueryCached, QueryStale:
		return m, nil
	}
	return "", fmt.Errorf("consul query mode %q: want default, plain, cached or stale", s)
}

// options returns the options of one query: of the catalog, or of a
// service's instances.
func (m QueryMode) options(catalog bool, waitIndex uint64, wait time.Duration) *api.QueryOptions {
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait}
	switch m {
	case QueryCached:
		q.UseCache = true
	case QueryStale:
		q.AllowStale = true
	}
	return q
}
