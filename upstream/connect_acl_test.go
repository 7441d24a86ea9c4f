package upstream_test

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs/certstest"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// A token that may not read the sidecars, the intentions or the agent's
// ACL settings gets answers cut short (or a refusal), not errors that say
// so: Status and the log name the missing permissions.
func TestMTLSWatchesNameMissingACLPermissions(t *testing.T) {
	k := newMTLSKit(t)
	car := k.sidecar(t, "web", "a")
	logs := &certstest.LogBuffer{}
	fc, m, _ := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false),
		func(c *upstream.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) },
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))})
	fc.Set(connectPath, upstreamtest.FakeAnswer{Index: 4, Body: []*api.ServiceEntry{}, FilteredByACLs: true})
	fc.Set(intentionsPath, upstreamtest.FakeAnswer{Index: 6, Body: map[string][]*api.Intention{"web": {}}, FilteredByACLs: true})
	m.Watch("web")

	want := `connect sidecars of "web": consul's ACLs hide instances: meshlet's token (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE) lacks service:read on "web-sidecar-proxy"`
	upstreamtest.Eventually(t, "the sidecars' permission in Status", func() bool { return statusHas(m, want) })
	upstreamtest.Eventually(t, "the intentions' permission in the log", func() bool {
		return strings.Contains(logs.String(), `query="intentions toward \"web\"" missing="intentions:read on \"web\""`)
	})
	// The fake agent has no /v1/agent/self: the default policy is unread
	// at every intentions answer, and said once.
	setIntentions(fc, 7)
	setIntentions(fc, 8)
	upstreamtest.Eventually(t, "the intentions watch to read index 8", func() bool {
		return slices.Contains(fc.IndexesSent(intentionsPath), "8")
	})
	if n := strings.Count(logs.String(), `level=WARN msg="cannot read the local consul agent's ACL settings`); n != 1 {
		t.Errorf("%d warnings about the agent's ACL settings, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `missing=agent:read`) {
		t.Errorf("the warning does not name agent:read:\n%s", logs.String())
	}

	fc.Set(connectPath, upstreamtest.FakeAnswer{Index: 9, Body: []*api.ServiceEntry{sidecarEntry(t, "a", car.addr)}})
	upstreamtest.Eventually(t, "Status clear once the token may read", func() bool { return !statusHas(m, "connect sidecars") })
}

// A token Consul refuses outright gets a 403 naming the permission: the
// log says which one to give meshlet's token, for the sidecars and the
// intentions alike.
func TestMTLSWatchesExplainRefusals(t *testing.T) {
	k := newMTLSKit(t)
	logs := &certstest.LogBuffer{}
	fc, m, _ := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false),
		func(c *upstream.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) },
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))})
	refuse := func(perm, on string) upstreamtest.FakeAnswer {
		return upstreamtest.FakeAnswer{Code: 403,
			ErrBody: `Permission denied: token with AccessorID 'f00' lacks permission '` + perm + `' on "` + on + `"`}
	}
	fc.Set(connectPath, refuse("service:read", "web-sidecar-proxy"))
	fc.Set(intentionsPath, refuse("intentions:read", "web"))
	m.Watch("web")
	for _, want := range []string{
		`missing consul ACL permission service:read on \"web-sidecar-proxy\"`,
		`missing consul ACL permission intentions:read on \"web\"`,
	} {
		upstreamtest.Eventually(t, want, func() bool { return strings.Contains(logs.String(), want) })
	}
}
