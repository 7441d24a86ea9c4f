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
	// agent and service.
	QueryDefault QueryMode = ""
	// QueryPlain sends plain blocking queries for both: each sidecar's
	// catalog query is a request to the servers, woken by every change of
	// the catalog.
	QueryPlain QueryMode = "plain"
	// QueryCached asks the agent's cache (?cached) for a service's
	// instances (the agent streams them when it streams, and otherwise
	// refreshes them with one blocking query per service). Never for the
	// catalog: Consul's cache of /v1/catalog/services loses changes. Its
	// background refresh asks the servers with AllowNotModifiedResponse,
	// and Catalog.ListServices (since Consul 1.9, still in 1.14.11) sets NotModified
	// when its blocking loop starts at the same index but never clears it
	// when a change wakes the loop, so the cache keeps its old list (and
	// that list's index) while its entry's index moves on: a service
	// registered after the first answer stays unknown, and every blocking
	// ?cached query returns at once with the old index (reproduced on a
	// dev agent: X-Cache: HIT, X-Consul-Index 11 while the plain query
	// said 18, 19, ...; hashicorp/consul#8980).
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
		q.UseCache = !catalog
	case QueryStale:
		q.AllowStale = true
	}
	return q
}
