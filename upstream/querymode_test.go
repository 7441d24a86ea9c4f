package upstream

import (
	"errors"
	"strings"
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
		{QueryCached, true, false, false, false}, // the agent's cache of the catalog loses changes (querymode.go)
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

// A cached answer is an answer while the liveness check passes, whatever
// its age (after a leader loss the age stays above zero for up to 30 s),
// and a failure while it fails (a partitioned agent answers from its
// cache).
func TestCachedAnswerCountsOnlyWhileTheServersAnswer(t *testing.T) {
	cached := &api.QueryOptions{UseCache: true}
	aged := &api.QueryMeta{CacheHit: true, CacheAge: 3 * time.Second}
	for _, tc := range []struct {
		name string
		q    *api.QueryOptions
		meta *api.QueryMeta
		down bool
		want string // in the error; "" for none
	}{
		{"fresh", cached, &api.QueryMeta{CacheHit: true}, false, ""},
		{"aged, servers answer", cached, aged, false, ""},
		{"fresh, liveness fails", cached, &api.QueryMeta{CacheHit: true}, true, "answers only from its cache: it cannot reach its servers (no known consul servers)"},
		{"aged, liveness fails", cached, aged, true, "answers only from its cache (not refreshed for 3s): it cannot reach its servers"},
		{"not cached, liveness fails", &api.QueryOptions{}, aged, true, ""},
		{"no meta", cached, nil, true, "only from its cache: it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l liveness
			if tc.down {
				err := errors.New("no known consul servers")
				l.down.Store(&err)
			}
			err := l.cachedAnswer(tc.q, tc.meta)
			if (err != nil) != (tc.want != "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("cachedAnswer = %v, want %q", err, tc.want)
			}
		})
	}
	var l liveness
	err := errors.New("down")
	l.down.Store(&err)
	l.answered(time.Now())
	if err := l.cachedAnswer(cached, aged); err != nil {
		t.Errorf("after an answer of the servers: %v", err)
	}
}
