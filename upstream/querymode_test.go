package upstream

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestQueryModeOptions(t *testing.T) {
	for _, tc := range []struct {
		mode                       QueryMode
		catalog                    bool
		wantCache, wantStale, fail bool
	}{
		{QueryDefault, true, false, false, false},
		{QueryDefault, false, false, false, false}, // the agent streams it
		{QueryPlain, true, false, false, false},
		{QueryCached, false, true, false, false},
		{QueryStale, true, false, true, false},
		{"bogus", false, false, false, true},
	} {
		if _, err := ParseQueryMode(string(tc.mode)); (err != nil) != tc.fail {
			t.Errorf("ParseQueryMode(%q) = %v", tc.mode, err)
		}
		if tc.fail {
			continue
		}
		q := tc.mode.options(tc.catalog, 7, time.Minute)
		if q.UseCache != tc.wantCache || q.AllowStale != tc.wantStale || q.WaitIndex != 7 || q.WaitTime != time.Minute || q.RequireConsistent {
			t.Errorf("%q (catalog %v): %+v", tc.mode, tc.catalog, q)
		}
	}
}

func TestStaleCacheIsAFailure(t *testing.T) {
	cached := &api.QueryOptions{UseCache: true}
	for _, tc := range []struct {
		q    *api.QueryOptions
		meta *api.QueryMeta
		fail bool
	}{
		{cached, &api.QueryMeta{CacheHit: true}, false},
		{cached, &api.QueryMeta{CacheHit: true, CacheAge: 3 * time.Second}, true},
		{&api.QueryOptions{}, &api.QueryMeta{CacheAge: 3 * time.Second}, false},
		{cached, nil, false},
	} {
		if err := staleCache(tc.q, tc.meta); (err != nil) != tc.fail {
			t.Errorf("staleCache(%+v, %+v) = %v", tc.q, tc.meta, err)
		}
	}
}
