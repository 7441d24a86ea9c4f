package upstream

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzStickyCookieRoundTrip checks the cookie codec end to end, for any
// service, cookie name (as a service's meta would set it), sticky key,
// instance and max age: the value decodes to the ID it encodes; the
// Set-Cookie meshlet writes reads back in net/http (as a client's cookie
// jar would) as exactly that cookie; the Cookie header a client then sends,
// among its other cookies, leads meshlet back to the same instance; and on
// any Cookie line, meshlet and net/http agree on which sticky values it
// carries, so that meshlet pins no client on a cookie the client did not
// send, and misses none it did.
func FuzzStickyCookieRoundTrip(f *testing.F) {
	f.Add("web", "", "", "node-1", "web-1", 3600, "_ga=GA1.2.3; theme=dark")
	f.Add("web", "CONTAINERID", "secret", "n", "web-8080", 0, "CONTAINERID=x; CONTAINERID=")
	f.Add("odd name(x)", "a!#$%&'*+-.^_`|~z", "\x00\xff", "", "", -1, "\"; =;;")
	f.Add(strings.Repeat("s", 80), "meshlet-web", "k", "node\x00", "\x00id", 315360000, " meshlet-web = AAAAAAAAAAAAAAAAAAAAAA ")
	f.Fuzz(func(t *testing.T, service, cookieName, secret, node, serviceID string, maxAge int, other string) {
		var metas []map[string]string
		if cookieName != "" {
			metas = []map[string]string{{MetaPrefix + "sticky": "cookie", MetaPrefix + "sticky-cookie": cookieName}}
		}
		p, _ := derivePolicy(service, metas, Overrides{})
		name := p.CookieName
		codec := newCookieCodec(service, name, []byte(secret))
		id := codec.id(node, serviceID)

		// The value decodes to the ID, bare or quoted, and only to it.
		for _, v := range []string{id.String(), `"` + id.String() + `"`} {
			if got, ok := parseStickyValue(v); !ok || got != id {
				t.Fatalf("parseStickyValue(%q) = %v, %v; want %v", v, got, ok, id)
			}
		}
		if again := newCookieCodec(service, name, []byte(secret)).id(node, serviceID); again != id {
			t.Fatalf("another codec computes %v, want %v", again, id)
		}

		// The Set-Cookie reads back in net/http as exactly this cookie.
		set := codec.setCookie(id, maxAge)
		resp := http.Response{Header: http.Header{"Set-Cookie": {set}}}
		cs := resp.Cookies()
		if len(cs) != 1 {
			t.Fatalf("Set-Cookie %q: net/http reads %d cookies", set, len(cs))
		}
		c := cs[0]
		wantAge := 0
		if maxAge > 0 {
			wantAge = maxAge
		}
		if c.Name != name || c.Value != id.String() || c.Path != "/" || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.MaxAge != wantAge || c.Secure || c.Domain != "" {
			t.Fatalf("Set-Cookie %q reads as %+v (name %q, value %q, max age %d)", set, c, name, id, wantAge)
		}
		if !SetsCookie(resp.Header, name) {
			t.Fatalf("SetsCookie does not see its own %q", set)
		}

		// A client sends it back, written by net/http, after its other
		// cookies (at most a few of our name, so that ours is within the
		// limit): meshlet finds this instance.
		req, _ := http.NewRequest("GET", "http://web.local/", nil)
		req.AddCookie(c)
		ours := req.Header.Get("Cookie")
		for _, line := range []string{ours, other + "; " + ours} {
			if strings.Count(line, name) > maxStickyCookies || len(line) > maxCookieHeaderLn {
				continue
			}
			if !StickyCookies(http.Header{"Cookie": {line}}, name, func(got StickyID) bool { return got == id }) {
				t.Fatalf("cookie %q of %q not found in %q", id, name, line)
			}
		}

		// On any line within the limits (net/http reads no cookies at all
		// from a request with 3000 or more, its GODEBUG httpcookiemaxnum),
		// meshlet reports the sticky values net/http reads as cookies of
		// that name, in order, and no others.
		if strings.Count(other, name) > maxStickyCookies || len(other) > maxCookieHeaderLn || strings.Count(other, ";") >= 3000 {
			return
		}
		h := http.Header{"Cookie": {other}}
		var got, want []StickyID
		StickyCookies(h, name, func(id StickyID) bool { got = append(got, id); return false })
		for _, c := range (&http.Request{Header: h}).Cookies() {
			if c.Name != name {
				continue
			}
			if id, ok := parseStickyValue(c.Value); ok {
				want = append(want, id)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("Cookie %q: meshlet reads %v, net/http %v", other, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("Cookie %q: meshlet reads %v, net/http %v", other, got, want)
			}
		}
	})
}
