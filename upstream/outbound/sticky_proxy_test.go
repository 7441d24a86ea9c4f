package outbound

import (
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// stickyInstances starts n whoAmI instances of "web" named a, b, c, ...
// and returns their servers and Consul entries, sticky by meta.
func stickyInstances(t *testing.T, n int, meta ...string) ([]*httptest.Server, []*api.ServiceEntry) {
	t.Helper()
	var srvs []*httptest.Server
	var entries []*api.ServiceEntry
	for i := range n {
		name := string(rune('a' + i))
		srv := upstreamtest.WhoAmI(t, name)
		srvs = append(srvs, srv)
		entries = append(entries, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", name, upstreamtest.AddrOf(srv)), append(append([]string{}, upstreamtest.StickyMeta...), meta...)...))
	}
	return srvs, entries
}

// jarClient is an app that keeps cookies.
func jarClient(t testing.TB, front *upstreamtest.Front) *http.Client {
	t.Helper()
	c := upstreamtest.Client(front)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Jar = jar
	return c
}

func TestStickyClientStaysAndCookielessClientsSpread(t *testing.T) {
	_, entries := stickyInstances(t, 3)
	_, _, front := webMesh(t, nil, entries...)

	keeper := jarClient(t, front)
	first, setCookies := upstreamtest.GetWith(t, keeper, "")
	if len(setCookies) != 1 || !strings.HasPrefix(setCookies[0], "CONTAINERID=") ||
		!strings.Contains(setCookies[0], "; Path=/; HttpOnly; SameSite=Lax") {
		t.Fatalf("first answer's Set-Cookie = %q", setCookies)
	}
	for i := range 30 {
		got, sc := upstreamtest.GetWith(t, keeper, "")
		if got != first {
			t.Fatalf("request %d went to %s, want %s", i, got, first)
		}
		if len(sc) != 0 {
			t.Fatalf("request %d with the cookie got another: %q", i, sc)
		}
	}

	counts := map[string]int{}
	plain := upstreamtest.Client(front)
	for range 30 {
		got, sc := upstreamtest.GetWith(t, plain, "")
		counts[got]++
		if len(sc) != 1 {
			t.Errorf("cookieless request got Set-Cookie %q, want one", sc)
		}
	}
	if counts["a"] != 10 || counts["b"] != 10 || counts["c"] != 10 {
		t.Errorf("cookieless requests per instance = %v, want 10 each", counts)
	}
}

func TestStickyCookieIsTheSameInEverySidecar(t *testing.T) {
	_, entries := stickyInstances(t, 2)
	_, _, front1 := webMesh(t, nil, entries...)
	_, _, front2 := webMesh(t, nil, entries...)
	inst, sc := upstreamtest.GetWith(t, upstreamtest.Client(front1), "")
	cookie := strings.SplitN(sc[0], ";", 2)[0]
	for range 5 {
		if got, more := upstreamtest.GetWith(t, upstreamtest.Client(front2), cookie); got != inst || len(more) != 0 {
			t.Errorf("another sidecar sent %q to %s (Set-Cookie %q), want %s", cookie, got, more, inst)
		}
	}
}

func TestStickyRepinsWhenThePinnedInstanceGoes(t *testing.T) {
	srvs, entries := stickyInstances(t, 3)
	fc, m, front := webMesh(t, nil, entries...)
	c := jarClient(t, front)
	pinned, _ := upstreamtest.GetWith(t, c, "")
	idx := int(pinned[0] - 'a')

	// Critical in Consul: the next request moves, with a new cookie.
	rest := append([]*api.ServiceEntry{}, entries...)
	rest[idx] = upstreamtest.WithStatus(upstreamtest.Instance(t, "web", pinned, upstreamtest.AddrOf(srvs[idx])), api.HealthCritical)
	upstreamtest.WithMeta(rest[idx], upstreamtest.StickyMeta...)
	fc.SetHealth("web", 8, rest...)
	upstreamtest.Eventually(t, "two passing", func() bool { return len(m.Endpoints("web")) == 2 })
	moved, sc := upstreamtest.GetWith(t, c, "")
	if moved == pinned || len(sc) != 1 {
		t.Fatalf("after %s went critical: served by %s with Set-Cookie %q; want another instance and a new cookie", pinned, moved, sc)
	}
	for range 5 {
		if got, _ := upstreamtest.GetWith(t, c, ""); got != moved {
			t.Fatalf("not pinned to the new instance: %s, want %s", got, moved)
		}
	}

	// Killed while Consul still lists it: the request is retried elsewhere
	// and re-pinned.
	fc.SetHealth("web", 9, entries...)
	upstreamtest.Eventually(t, "three passing", func() bool { return len(m.Endpoints("web")) == 3 })
	midx := int(moved[0] - 'a')
	srvs[midx].CloseClientConnections()
	srvs[midx].Close()
	again, sc := upstreamtest.GetWith(t, c, "")
	if again == moved || len(sc) != 1 {
		t.Fatalf("after %s was killed: served by %s with Set-Cookie %q", moved, again, sc)
	}
}

func TestStickyClientsStayWhileOtherInstancesComeAndGo(t *testing.T) {
	_, entries := stickyInstances(t, 5)
	fc, m, front := webMesh(t, nil, entries[:3]...)
	clients := make([]*http.Client, 6)
	pins := make([]string, 6)
	for i := range clients {
		clients[i] = jarClient(t, front)
		pins[i], _ = upstreamtest.GetWith(t, clients[i], "")
	}
	check := func(when string) {
		t.Helper()
		for i, c := range clients {
			if got, sc := upstreamtest.GetWith(t, c, ""); got != pins[i] || len(sc) != 0 {
				t.Errorf("%s: client %d went to %s (Set-Cookie %q), want %s", when, i, got, sc, pins[i])
			}
		}
	}
	fc.SetHealth("web", 10, entries...) // 3 → 5
	upstreamtest.Eventually(t, "five", func() bool { return len(m.Endpoints("web")) == 5 })
	check("after scaling to 5")
	// Back to 4, removing an instance nobody is pinned to.
	var keep []*api.ServiceEntry
	removed := false
	for _, e := range entries {
		if !removed && !strings.Contains(strings.Join(pins, ""), e.Service.ID) {
			removed = true
			continue
		}
		keep = append(keep, e)
	}
	if !removed {
		t.Fatal("every instance has a pinned client")
	}
	fc.SetHealth("web", 11, keep...)
	upstreamtest.Eventually(t, "four", func() bool { return len(m.Endpoints("web")) == 4 })
	check("after scaling to 4")
}

func TestStickyIgnoresForgedAndGarbageCookies(t *testing.T) {
	_, entries := stickyInstances(t, 3)
	_, _, front := webMesh(t, nil, entries...)
	other := upstream.StickyValue("web", "CONTAINERID", nil, "node-x", "x") // an instance not in the set
	wrongService := upstream.StickyValue("api", "CONTAINERID", nil, "node-a", "a")
	c := upstreamtest.Client(front)
	for _, cookie := range []string{
		"CONTAINERID=garbage",
		"CONTAINERID=" + other,
		"CONTAINERID=" + wrongService,
		"CONTAINERID=" + strings.Repeat("A", 6000),
		"CONTAINERID=127.0.0.1:1",
		"CONTAINERID=" + upstreamtest.AddrOf(upstreamtest.WhoAmI(t, "outsider")),
	} {
		counts := map[string]int{}
		for range 9 {
			got, sc := upstreamtest.GetWith(t, c, cookie)
			counts[got]++
			if len(sc) != 1 || !strings.HasPrefix(sc[0], "CONTAINERID=") {
				t.Errorf("%.40q: Set-Cookie %q, want a new cookie", cookie, sc)
			}
		}
		if counts["a"] != 3 || counts["b"] != 3 || counts["c"] != 3 {
			t.Errorf("%.40q: requests per instance = %v, want the normal spread over a, b, c", cookie, counts)
		}
	}
}

func TestStickyLeavesTheInstancesOwnCookiesAlone(t *testing.T) {
	own := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", "own")
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s1", Path: "/app"})
		if r.URL.Query().Get("also") != "" {
			http.SetCookie(w, &http.Cookie{Name: "CONTAINERID", Value: "app-made"})
		}
	}))
	t.Cleanup(own.Close)
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "own", upstreamtest.AddrOf(own)), upstreamtest.StickyMeta...))
	resp, _ := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/")
	sc := resp.Header.Values("Set-Cookie")
	if len(sc) != 2 || sc[0] != "session=s1; Path=/app" || !strings.HasPrefix(sc[1], "CONTAINERID=") {
		t.Errorf("Set-Cookie = %q, want the instance's session cookie untouched, then ours", sc)
	}
	resp, _ = upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/?also=1")
	if sc := resp.Header.Values("Set-Cookie"); len(sc) != 2 || sc[1] != "CONTAINERID=app-made" {
		t.Errorf("Set-Cookie = %q, want the instance's own CONTAINERID and none of ours", sc)
	}
}

func TestStickyByCallerOverrideWithMaxAgeAndKey(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	ov, err := upstream.ParseOverrides("web:sticky=cookie,sticky-max-age=90")
	if err != nil {
		t.Fatal(err)
	}
	_, _, front := webMesh(t, func(c *upstream.Config) { c.Overrides = ov; c.StickyKey = []byte("k") }, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	_, sc := upstreamtest.GetWith(t, upstreamtest.Client(front), "")
	want := upstream.StickyValue("web", "meshlet-web", []byte("k"), "node-a", "a")
	if len(sc) != 1 || sc[0] != fmt.Sprintf("meshlet-web=%s; Path=/; Max-Age=90; HttpOnly; SameSite=Lax", want) {
		t.Errorf("Set-Cookie = %q, want meshlet-web=%s with Max-Age=90", sc, want)
	}
}

// An ejected pinned instance re-pins, and stickiness and ejection agree on
// where the client goes next.
func TestStickyPinnedInstanceEjectedRepins(t *testing.T) {
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", "bad")
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	good := upstreamtest.WhoAmI(t, "good")
	meta := append(append([]string{}, upstreamtest.StickyMeta...), "meshlet-eject-5xx", "true", "meshlet-eject-after", "2")
	_, _, front := webMesh(t, nil,
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "bad", upstreamtest.AddrOf(failing)), meta...), upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "good", upstreamtest.AddrOf(good)), meta...))
	cookie := "CONTAINERID=" + upstream.StickyValue("web", "CONTAINERID", nil, "node-bad", "bad")
	c := upstreamtest.Client(front)
	for i := range 2 {
		req, _ := http.NewRequest(http.MethodGet, "http://web.local/", nil)
		req.Header.Set("Cookie", cookie)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusInternalServerError || len(resp.Header.Values("Set-Cookie")) != 0 {
			t.Fatalf("request %d pinned to bad: %d, Set-Cookie %q; want its 500 and no new cookie", i, resp.StatusCode, resp.Header.Values("Set-Cookie"))
		}
	}
	got, sc := upstreamtest.GetWith(t, c, cookie)
	if got != "good" || len(sc) != 1 {
		t.Errorf("after bad was ejected: %s with Set-Cookie %q, want good and a new cookie", got, sc)
	}
}
