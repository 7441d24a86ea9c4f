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
	// QueryDefault asks for the catalog's names from the agent's cache
	// (?cached): the agent refreshes it with one blocking query to the
	// servers for all its sidecars, so a change of a service nobody on the
	// host watches costs the servers nothing per sidecar. A service's
	// instances are asked with a plain blocking query, which a Consul
	// client agent (1.10 and later, unless use_streaming_backend is off)
	// serves from its streaming subscription: one per agent and service.
	// A cached answer counts only while the agent reaches its servers, as
	// the liveness check tells (see liveness.cachedAnswer).
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
	case QueryDefault:
		q.UseCache = catalog
	case QueryCached:
		q.UseCache = true
	case QueryStale:
		q.AllowStale = true
	}
	return q
}
