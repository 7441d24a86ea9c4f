package upstream

import (
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestEndpointsFromHealth(t *testing.T) {
	entry := func(id, nodeAddr, svcAddr string, port int) *api.ServiceEntry {
		return &api.ServiceEntry{
			Node:    &api.Node{Node: "node-" + id, Address: nodeAddr},
			Service: &api.AgentService{ID: id, Address: svcAddr, Port: port, Tags: []string{"v1"}, Meta: map[string]string{"k": "v"}},
		}
	}
	for _, tc := range []struct {
		name        string
		in          []*api.ServiceEntry
		wantAddrs   []string
		wantSkipped []string
	}{
		{"service address wins", []*api.ServiceEntry{entry("a", "10.0.0.1", "10.1.1.1", 80)}, []string{"10.1.1.1:80"}, nil},
		{"node address as fallback", []*api.ServiceEntry{entry("a", "10.0.0.1", "", 8080)}, []string{"10.0.0.1:8080"}, nil},
		{"ipv6 bracketed", []*api.ServiceEntry{entry("a", "", "fd00::1", 80)}, []string{"[fd00::1]:80"}, nil},
		{"v4-mapped unmapped", []*api.ServiceEntry{entry("a", "", "::ffff:10.0.0.9", 80)}, []string{"10.0.0.9:80"}, nil},
		{"dns name kept", []*api.ServiceEntry{entry("a", "", "web-1.internal", 80)}, []string{"web-1.internal:80"}, nil},
		{"no address skipped", []*api.ServiceEntry{entry("a", "", "", 80)}, nil, []string{"a"}},
		{"no port skipped", []*api.ServiceEntry{entry("a", "10.0.0.1", "", 0)}, nil, []string{"a"}},
		{"port out of range skipped", []*api.ServiceEntry{entry("a", "10.0.0.1", "", 70000)}, nil, []string{"a"}},
		{"nil entries ignored", []*api.ServiceEntry{nil, {Node: &api.Node{}}}, nil, nil},
		{"no node", []*api.ServiceEntry{{Service: &api.AgentService{ID: "x", Address: "10.0.0.2", Port: 1}}}, []string{"10.0.0.2:1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eps, skipped := endpointsFromHealth(tc.in)
			var addrs []string
			for _, e := range eps {
				addrs = append(addrs, e.Addr)
			}
			if !slices.Equal(addrs, tc.wantAddrs) || !slices.Equal(skipped, tc.wantSkipped) {
				t.Errorf("got %q skipped %q, want %q skipped %q", addrs, skipped, tc.wantAddrs, tc.wantSkipped)
			}
		})
	}
}

func TestEndpointSetIsOrderedAndCopied(t *testing.T) {
	set := newEndpointSet([]Endpoint{{ID: "b", Node: "n2"}, {ID: "z", Node: "n1"}, {ID: "a", Node: "n2"}})
	got := set.Endpoints()
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
	}
	if !slices.Equal(ids, []string{"z", "a", "b"}) {
		t.Errorf("order = %q, want by node then ID", ids)
	}
	got[0].ID = "changed"
	if set.At(0).ID != "z" {
		t.Error("changing the returned slice changed the set")
	}
	if !set.equal(newEndpointSet([]Endpoint{{ID: "a", Node: "n2"}, {ID: "b", Node: "n2"}, {ID: "z", Node: "n1"}})) {
		t.Error("equal sets built in another order differ")
	}
	if set.equal(newEndpointSet([]Endpoint{{ID: "a", Node: "n2"}})) {
		t.Error("sets of different sizes are equal")
	}
}
