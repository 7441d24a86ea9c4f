package upstream_test

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// Where tag subsets meet mTLS: a subset routes on its service's connect
// state (sidecars, identity, intentions, strict refusals), never on an
// empty one of its own.

// getHost makes one request for host through c and returns the status,
// X-Instance (or X-Meshlet-Error) and body.
func getHost(t *testing.T, c *http.Client, host string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if e := resp.Header.Get("X-Meshlet-Error"); e != "" {
		return resp.StatusCode, e, string(b)
	}
	return resp.StatusCode, resp.Header.Get("X-Instance"), string(b)
}

// Permissive: the identity arrives after the subset is watched. Its
// rerouting of the service must leave the subset its instance (now over
// mTLS), not an empty view until the service's next change.
func TestMTLSSubsetKeepsInstancesWhenIdentityArrives(t *testing.T) {
	for i := range 4 {
		k := newMTLSKit(t)
		b := k.sidecar(t, "web", "b")
		insts := []*api.ServiceEntry{
			tagged(t, "a", upstreamtest.DeadAddr(t), "v1"),
			tagged(t, "b", upstreamtest.DeadAddr(t), "v2"),
		}
		svc := "late" + string(rune('a'+i))
		client := k.manager(t, svc, true)
		fc, m, _ := mtlsMesh(t, upstream.MTLSPermissive, client, nil, insts, sidecarEntry(t, "b", b.addr))
		fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v1", "v2"}}})
		upstreamtest.Eventually(t, "the subset v2", func() bool { ok, _ := m.SubsetExists("v2", "web"); return ok })
		name := upstream.SubsetName("v2", "web")
		m.Watch(name)
		upstreamtest.Eventually(t, "the subset instance", func() bool { return len(m.Endpoints(name)) == 1 })
		k.giveLeaf(t, svc)
		upstreamtest.Eventually(t, "the subset over mTLS", func() bool {
			eps := m.Endpoints(name)
			return len(eps) == 1 && eps[0].MTLS
		})
		// Whatever else the identity's arrival does, after it the subset
		// keeps its instance (bounded: 300 ms of checks).
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			if eps := m.Endpoints(name); len(eps) != 1 {
				t.Fatalf("run %d: subset after identity: %v", i, eps)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Strict: the connect watch has not answered yet when the health answer
// comes. v2.web.local, like web.local, waits for it (and then gets 200
// over mTLS), instead of refusing with no-mtls-instance.
func TestMTLSSubsetWaitsForConnectAnswer(t *testing.T) {
	k := newMTLSKit(t)
	b := k.sidecar(t, "web", "b")
	fc := upstreamtest.NewFakeConsul(t)
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v2"}}})
	fc.SetHealth("web", 7, tagged(t, "b", upstreamtest.DeadAddr(t), "v2"))
	fc.Set(connectPath, upstreamtest.FakeAnswer{Index: 3, Body: []*api.ServiceEntry{sidecarEntry(t, "b", b.addr)}})
	fc.SetHolding(connectPath, true)
	setIntentions(fc, 5)
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		c.MTLS, c.ClientTLS = upstream.MTLSStrict, k.manager(t, "web-client", false)
		c.CallTimeout = 10 * time.Second
	})
	upstreamtest.Eventually(t, "the subset v2", func() bool { ok, _ := m.SubsetExists("v2", "web"); return ok })
	front := outboundFrontFor(t, m, upstream.SubsetName("v2", "web"), "v2.web.local")
	c := upstreamtest.Client(front)
	go func() { time.Sleep(1500 * time.Millisecond); fc.SetHolding(connectPath, false) }()
	if status, who, body := getHost(t, c, "v2.web.local"); status != http.StatusOK || who != "b" {
		t.Errorf("v2.web.local before the connect watch answered: %d %s %s; want 200 from b", status, who, body)
	}
}

// Permissive: a deny intention toward web refuses v2.web too, also when
// the subset's instance is plaintext (no sidecar), as it refuses web
// whose other instance is over mTLS.
func TestMTLSSubsetDeniedWithItsService(t *testing.T) {
	k := newMTLSKit(t)
	a := k.sidecar(t, "web", "a")
	b := upstreamtest.WhoAmI(t, "b")
	insts := []*api.ServiceEntry{
		tagged(t, "a", upstreamtest.DeadAddr(t), "v1"),
		tagged(t, "b", upstreamtest.AddrOf(b), "v2"),
	}
	fc, m, webFront := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false), nil, insts, sidecarEntry(t, "a", a.addr))
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v1", "v2"}}})
	upstreamtest.Eventually(t, "the subset v2", func() bool { ok, _ := m.SubsetExists("v2", "web"); return ok })
	name := upstream.SubsetName("v2", "web")
	front := outboundFrontFor(t, m, name, "v2.web.local")
	c := upstreamtest.Client(front)
	upstreamtest.Eventually(t, "v2.web.local served by b in plaintext", func() bool {
		status, who, _ := getHost(t, c, "v2.web.local")
		return status == http.StatusOK && who == "b"
	})
	setIntentions(fc, 9, &api.Intention{SourceName: "web-client", DestinationName: "web", Action: api.IntentionActionDeny, Precedence: 9})
	wc := upstreamtest.Client(webFront)
	upstreamtest.Eventually(t, "the deny of web refusing web.local", func() bool {
		status, code, _ := get(t, wc)
		return status == http.StatusForbidden && code == upstream.ErrCodeDenied
	})
	if status, code, body := getHost(t, c, "v2.web.local"); status != http.StatusForbidden || code != upstream.ErrCodeDenied {
		t.Errorf("v2.web.local after a deny of web: %d %s %s; want 403 %s", status, code, body, upstream.ErrCodeDenied)
	}
}

// Strict: a restarted agent re-registers the instance and its sidecar,
// every check reset, so /v1/health/connect lists no passing sidecar. The
// instance that passed before settles, and strict mTLS must route to it
// meanwhile, not refuse with no-mtls-instance.
func TestMTLSStrictRoutesWhileSettlingAfterReset(t *testing.T) {
	k := newMTLSKit(t)
	a := k.sidecar(t, "web", "a")
	fc, m, front := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), func(c *upstream.Config) { c.SettleTime = time.Minute },
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))}, sidecarEntry(t, "a", a.addr))
	c := upstreamtest.Client(front)
	upstreamtest.Eventually(t, "mTLS", func() bool { _, who, _ := get(t, c); return who == "a" })
	fc.SetHealth("web", 8, upstreamtest.WithResetCheck(upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))))
	fc.Set(connectPath, upstreamtest.FakeAnswer{Index: 4, Body: []*api.ServiceEntry{}})
	upstreamtest.Eventually(t, "reset and empty connect answer applied", func() bool {
		// The watch asks with ?index=4 only after it applied answer 4.
		return len(m.Endpoints("web")) == 0 && slices.Contains(fc.IndexesSent(connectPath), "4")
	})
	if status, who, body := get(t, c); status != http.StatusOK || who != "a" {
		t.Errorf("while settling: %d %s %s; want 200 from a", status, who, body)
	}
}

// Strict: web has an instance over mTLS (a, v1), but the only v2 instance
// has no sidecar: v2.web.local answers no-mtls-instance, not no healthy
// instance, and web.local still routes to a.
func TestMTLSStrictSubsetWithoutSidecars(t *testing.T) {
	k := newMTLSKit(t)
	a := k.sidecar(t, "web", "a")
	insts := []*api.ServiceEntry{
		tagged(t, "a", upstreamtest.DeadAddr(t), "v1"),
		tagged(t, "b", upstreamtest.DeadAddr(t), "v2"),
	}
	fc, m, webFront := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), nil, insts, sidecarEntry(t, "a", a.addr))
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v1", "v2"}}})
	upstreamtest.Eventually(t, "the subset v2", func() bool { ok, _ := m.SubsetExists("v2", "web"); return ok })
	c := upstreamtest.Client(outboundFrontFor(t, m, upstream.SubsetName("v2", "web"), "v2.web.local"))
	if status, code, body := getHost(t, c, "v2.web.local"); status != http.StatusServiceUnavailable || code != upstream.ErrCodeNoMTLS {
		t.Errorf("v2.web.local without a v2 sidecar: %d %s %s; want 503 %s", status, code, body, upstream.ErrCodeNoMTLS)
	}
	if status, who, body := get(t, upstreamtest.Client(webFront)); status != http.StatusOK || who != "a" {
		t.Errorf("web.local: %d %s %s; want 200 from a", status, who, body)
	}
}
