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
	// agent and service, whatever the number of sidecars. The catalog is
	// not asked ?cached: a client agent cut off from its servers keeps
	// answering from its cache without an error, which would hide the
	// partition (seen in TestClusterLeaderLossAndPartition).
	QueryDefault QueryMode = ""
	// QueryPlain is QueryDefault, spelled out.
	QueryPlain QueryMode = "plain"
	// QueryCached asks the agent's cache (?cached) for both: fewer
	// requests to the servers, but a partition of the agent goes unseen
	// while the cache serves its last answers.
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
	return "", fmt.Errorf("consul query mode %q: want plain, cached or stale (or empty for the default)", s)
}

// options returns the options of one query: of the catalog, or of a
// service's instances (the same today; the bench has measured both ways).
func (m QueryMode) options(_ bool, waitIndex uint64, wait time.Duration) *api.QueryOptions {
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait}
	switch m {
	case QueryCached:
		q.UseCache = true
	case QueryStale:
		q.AllowStale = true
	}
	return q
}
