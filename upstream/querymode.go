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
	// not asked ?cached: after its agent lost its servers for a moment
	// (a leader lost), the cache reports its answers as stale for up to
	// 30 s, the only sign of a partition it gives (see staleCache).
	QueryDefault QueryMode = ""
	// QueryPlain sends plain blocking queries for both: each sidecar's
	// catalog query is a request to the servers, woken by every change of
	// the catalog.
	QueryPlain QueryMode = "plain"
	// QueryCached asks the agent's cache (?cached) for both: the fewest
	// requests to the servers, but a moment without servers makes the
	// watches fail for up to 30 s (see staleCache).
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
// service's instances (the same today).
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

// staleCache fails an answer from the agent's cache that the agent could
// not keep fresh: for the background-refreshed kinds (the catalog, the
// instances), Consul reports an age only while its refresh fails, from
// the first failure on, which is when the agent lost its servers. Without
// this, a partitioned agent would answer from its cache, with no error,
// for as long as it lasts.
func staleCache(q *api.QueryOptions, meta *api.QueryMeta) error {
	if q.UseCache && meta != nil && meta.CacheAge > 0 {
		return fmt.Errorf("the consul agent answers from its cache, which it has failed to refresh for %v: it cannot reach its servers", meta.CacheAge.Round(time.Millisecond))
	}
	return nil
}
