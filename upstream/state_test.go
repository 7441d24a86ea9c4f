package upstream

import (
	"strings"
	"testing"
	"time"
)

func TestDecodeState(t *testing.T) {
	now := time.Now().UTC().Format(time.RFC3339)
	for _, tc := range []struct {
		name, in string
		err      string
		eps      int
	}{
		{"good", `{"version":1,"confirmed_at":"` + now + `","catalog":["web"],"services":{"web":[{"id":"a","addr":"10.0.0.1:80","status":"passing"}]}}`, "", 1},
		{"not json", `{"version":`, "state file", 0},
		{"other version", `{"version":2,"confirmed_at":"` + now + `"}`, "version 2", 0},
		{"no time", `{"version":1}`, "not a plausible time", 0},
		{"future time", `{"version":1,"confirmed_at":"2999-01-01T00:00:00Z"}`, "not a plausible time", 0},
		{"bad entries dropped", `{"version":1,"confirmed_at":"` + now + `","services":{"web":[
			{"id":"a","addr":"10.0.0.1","status":"passing"},{"id":"","addr":"10.0.0.1:80","status":"passing"},
			{"id":"b","addr":"10.0.0.1:0","status":"passing"},{"id":"c","addr":"10.0.0.1:80","status":"weird"},
			{"id":"d","addr":"10.0.0.1:80","status":"critical"}],"bad name!":[{"id":"e","addr":"10.0.0.1:80","status":"passing"}]}}`, "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := decodeState([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, eps := range st.Services {
				n += len(eps)
			}
			if n != tc.eps || len(st.Services) > 1 {
				t.Errorf("kept %d endpoints in %d services, want %d in at most 1", n, len(st.Services), tc.eps)
			}
		})
	}
}
