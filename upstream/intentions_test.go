package upstream

import (
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
)

func TestDenial(t *testing.T) {
	me := certs.ID{TrustDomain: "x.consul", Namespace: "default", Datacenter: "dc1", Service: "web-client"}
	ixn := func(src string, action api.IntentionAction, prec int) *api.Intention {
		return &api.Intention{SourceName: src, SourceNS: "default", DestinationName: "web", Action: action, Precedence: prec}
	}
	l7 := ixn("web-client", "", 9)
	l7.Permissions = []*api.IntentionPermission{{Action: api.IntentionActionDeny}}
	peer := ixn("web-client", api.IntentionActionDeny, 9)
	peer.SourcePeer = "other-cluster"
	otherNS := ixn("web-client", api.IntentionActionDeny, 9)
	otherNS.SourceNS = "team-b"
	anyNS := ixn("web-client", api.IntentionActionDeny, 9)
	anyNS.SourceNS = "*"
	for _, tc := range []struct {
		name        string
		ixns        []*api.Intention
		defaultDeny bool
		deny        string // the intention named, "" for allowed
	}{
		{"none", nil, false, ""},
		{"none, default deny", nil, true, "web-client => web (none matches; the ACL default policy denies)"},
		{"exact deny", []*api.Intention{ixn("web-client", api.IntentionActionDeny, 9)}, false, "web-client => web (deny)"},
		{"exact allow over default deny", []*api.Intention{ixn("web-client", api.IntentionActionAllow, 9)}, true, ""},
		{"wildcard deny", []*api.Intention{ixn("*", api.IntentionActionDeny, 8)}, false, "* => web (deny)"},
		{"exact allow wins over wildcard deny", []*api.Intention{ixn("*", api.IntentionActionDeny, 8), ixn("web-client", api.IntentionActionAllow, 9)}, false, ""},
		{"exact deny wins over wildcard allow", []*api.Intention{ixn("*", api.IntentionActionAllow, 8), ixn("web-client", api.IntentionActionDeny, 9)}, false, "web-client => web (deny)"},
		{"another source", []*api.Intention{ixn("api", api.IntentionActionDeny, 9)}, false, ""},
		{"L7 permissions are the server's to judge", []*api.Intention{l7}, false, ""},
		{"a peer's service is not this one", []*api.Intention{peer}, false, ""},
		{"another namespace", []*api.Intention{otherNS}, false, ""},
		{"any namespace", []*api.Intention{anyNS}, false, "*/web-client => web (deny)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := denial(tc.ixns, me, "web", tc.defaultDeny)
			switch {
			case tc.deny == "" && d != nil:
				t.Errorf("denied by %q, want allowed", d.Intention)
			case tc.deny != "" && d == nil:
				t.Errorf("allowed, want denied by %q", tc.deny)
			case d != nil && d.Intention != tc.deny:
				t.Errorf("denied by %q, want %q", d.Intention, tc.deny)
			}
		})
	}
}

func TestIntentionDefault(t *testing.T) {
	for _, tc := range []struct {
		name string
		self map[string]map[string]any
		want bool
	}{
		{"dev agent", map[string]map[string]any{"DebugConfig": {"ACLsEnabled": false}}, true},
		{"nothing", nil, true},
		{"acl default deny", map[string]map[string]any{"DebugConfig": {"ACLsEnabled": true,
			"ACLResolverSettings": map[string]any{"ACLDefaultPolicy": "deny"}}}, false},
		{"acl default allow", map[string]map[string]any{"DebugConfig": {"ACLsEnabled": true,
			"ACLResolverSettings": map[string]any{"ACLDefaultPolicy": "allow"}}}, true},
	} {
		if got, why := intentionDefault(tc.self); got != tc.want {
			t.Errorf("%s: allow %v (%s), want %v", tc.name, got, why, tc.want)
		}
	}
}
