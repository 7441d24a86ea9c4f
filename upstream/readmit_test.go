package upstream

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestPassingAgainInConsulEndsAnEjection: Consul showing an ejected
// instance pass again after it did not is fresh evidence and brings it
// back at once; an answer in which it passed throughout does not.
func TestPassingAgainInConsulEndsAnEjection(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Consul: client})
	if err != nil {
		t.Fatal(err)
	}
	ep := func(id, status string) Endpoint {
		return Endpoint{ID: id, Node: "n", Addr: "10.0.0.1:80", Weight: 1, Status: status}
	}
	const pass, warn, crit = api.HealthPassing, api.HealthWarning, api.HealthCritical
	for _, tc := range []struct {
		name    string
		answers [][2]string // statuses of a and b, one answer each, after a's ejection
		want    bool        // a available right after the last answer
	}{
		{"passing throughout keeps the ejection", [][2]string{{pass, warn}, {pass, pass}}, false},
		{"critical keeps the ejection", [][2]string{{crit, pass}}, false},
		{"critical then passing ends it", [][2]string{{crit, pass}, {pass, pass}}, true},
		{"warning then passing ends it", [][2]string{{warn, pass}, {pass, pass}}, true},
		{"absent then passing ends it", [][2]string{{"", pass}, {pass, pass}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newServiceWatch("web")
			w.update([]Endpoint{ep("a", pass), ep("b", pass)}, m, true)
			p := DefaultPolicy("web")
			p.EjectAfter = 2
			set := w.view.Load().passing
			a := w.hosts.get(ep("a", pass))
			for range p.EjectAfter {
				set.failed(indexOf(t, set, "a"), time.Now(), &p)
			}
			if a.available(time.Now().UnixNano()) {
				t.Fatal("a was not ejected by its failures")
			}
			for _, st := range tc.answers {
				var eps []Endpoint
				if st[0] != "" {
					eps = append(eps, ep("a", st[0]))
				}
				eps = append(eps, ep("b", st[1]))
				w.update(eps, m, true)
			}
			a = w.hosts.get(ep("a", pass)) // a new state if a was absent
			if got := a.available(time.Now().UnixNano()); got != tc.want {
				t.Errorf("a available = %v, want %v", got, tc.want)
			}
			if tc.want && (a.failures.Load() != 0 || a.ejections.Load() != 0) {
				t.Errorf("re-admitted with %d failures, %d ejections; want a fresh start", a.failures.Load(), a.ejections.Load())
			}
		})
	}
}

func indexOf(t *testing.T, set *EndpointSet, id string) int {
	t.Helper()
	for i := range set.Len() {
		if set.At(i).ID == id {
			return i
		}
	}
	t.Fatalf("%s not in the set", id)
	return -1
}
