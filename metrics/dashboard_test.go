package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardNamesExist checks that every meshlet metric the Grafana
// dashboard queries is one this package defines (the integration test
// runs the queries themselves against a real Prometheus).
func TestDashboardNamesExist(t *testing.T) {
	b, err := os.ReadFile("../dashboards/meshlet.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboards/meshlet.json: %v", err)
	}
	m := New()
	m.WatchConsul(func() ConsulState { return ConsulState{} })
	m.WatchRegistrations(func() []Registration { return []Registration{{Service: "a"}} })
	m.WatchServices(func() []ServiceState { return []ServiceState{{Service: "web"}} })
	m.Service("web").Instance("web-1")
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, mf := range mfs {
		known[mf.GetName()] = true
	}
	name := regexp.MustCompile(`meshlet_[a-z_]+`)
	exprs := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, n := range name.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
				if !known[n] && !known[base] {
					t.Errorf("panel %q queries %s, which meshlet does not export", p.Title, n)
				}
			}
		}
	}
	if exprs < 10 {
		t.Errorf("only %d queries in the dashboard", exprs)
	}
}
