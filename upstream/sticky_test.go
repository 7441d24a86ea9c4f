package upstream

import (
	"net/http"
	"strings"
	"testing"
)

func TestCookieValuesAreStableOpaqueAndKeyed(t *testing.T) {
	a := newCookieCodec("web", "CONTAINERID", nil)
	again := newCookieCodec("web", "CONTAINERID", nil) // another sidecar, or after a restart
	v := a.id("node-1", "web-1").String()
	if got := again.id("node-1", "web-1").String(); got != v {
		t.Errorf("same instance, another codec: %q, want %q", got, v)
	}
	if len(v) != stickyValueLen {
		t.Errorf("value %q is %d long, want %d", v, len(v), stickyValueLen)
	}
	for _, leak := range []string{"web-1", "node-1", "10.", "8080"} {
		if strings.Contains(v, leak) {
			t.Errorf("value %q contains %q", v, leak)
		}
	}
	differ := map[string]string{
		"another instance":   a.id("node-1", "web-2").String(),
		"another node":       a.id("node-2", "web-1").String(),
		"another service":    newCookieCodec("api", "CONTAINERID", nil).id("node-1", "web-1").String(),
		"another cookie":     newCookieCodec("web", "other", nil).id("node-1", "web-1").String(),
		"a sticky key":       newCookieCodec("web", "CONTAINERID", []byte("secret")).id("node-1", "web-1").String(),
		"node/ID boundaries": a.id("node-1w", "eb-1").String(),
	}
	for what, got := range differ {
		if got == v {
			t.Errorf("%s gives the same value %q", what, v)
		}
	}
	keyed := newCookieCodec("web", "CONTAINERID", []byte("secret"))
	if keyed.id("n", "i") != newCookieCodec("web", "CONTAINERID", []byte("secret")).id("n", "i") {
		t.Error("the same sticky key gives different values")
	}
}

func TestParseStickyValue(t *testing.T) {
	good := newCookieCodec("web", "c", nil).id("n", "i").String()
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{good, true},
		{`"` + good + `"`, true},
		{"", false},
		{good[:21], false},
		{good + "A", false},
		{strings.Repeat("A", 4096), false},
		{"AAAAAAAAAAAAAAAAAAAAA=", false}, // padding is not ours
		{"AAAAAAAAAAAAAAAAAAAAA+", false}, // std alphabet
		{"AAAAAAAAAAAAAAAAAAAAAB", false}, // non-canonical last character
		{"10.0.0.1:8080_________", false},
	} {
		id, ok := parseStickyValue(tc.in)
		if ok != tc.want {
			t.Errorf("parseStickyValue(%.30q) = %v, want %v", tc.in, ok, tc.want)
		}
		if ok && id.String() != strings.Trim(tc.in, `"`) {
			t.Errorf("parseStickyValue(%q) decoded to %q", tc.in, id)
		}
	}
}

func TestStickyCookies(t *testing.T) {
	c := newCookieCodec("web", "CONTAINERID", nil)
	a, b := c.id("n", "a"), c.id("n", "b")
	known := map[StickyID]string{a: "a", b: "b"}
	for _, tc := range []struct {
		name  string
		lines []string
		want  string // the instance found, "" none
	}{
		{"none", nil, ""},
		{"ours alone", []string{"CONTAINERID=" + a.String()}, "a"},
		{"among others", []string{"x=1; CONTAINERID=" + b.String() + "; y=2"}, "b"},
		{"second header line", []string{"x=1", "CONTAINERID=" + a.String()}, "a"},
		{"garbage first, then a good one", []string{"CONTAINERID=garbage; CONTAINERID=" + b.String()}, "b"},
		{"forged value of the right shape", []string{"CONTAINERID=" + c.id("n", "gone").String()}, ""},
		{"other name with our value", []string{"containerid=" + a.String()}, ""},
		{"name only", []string{"CONTAINERID"}, ""},
		{"too many of ours", []string{strings.Repeat("CONTAINERID=x;", maxStickyCookies) + "CONTAINERID=" + a.String()}, ""},
		{"beyond the read limit", []string{strings.Repeat("x", maxCookieHeaderLn) + "; CONTAINERID=" + a.String()}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			StickyCookies(http.Header{"Cookie": tc.lines}, "CONTAINERID", func(id StickyID) bool {
				got = known[id]
				return got != ""
			})
			if got != tc.want {
				t.Errorf("found %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSetCookieAttributes(t *testing.T) {
	c := newCookieCodec("web", "CONTAINERID", nil)
	id := c.id("n", "a")
	if got, want := c.setCookie(id, 0), "CONTAINERID="+id.String()+"; Path=/; HttpOnly; SameSite=Lax"; got != want {
		t.Errorf("session cookie = %q, want %q", got, want)
	}
	if got := c.setCookie(id, 3600); !strings.Contains(got, "; Max-Age=3600;") {
		t.Errorf("cookie with max-age = %q", got)
	}
	// What net/http makes of it: the same cookie.
	parsed, err := http.ParseSetCookie(c.setCookie(id, 60))
	if err != nil || parsed.Name != "CONTAINERID" || parsed.Value != id.String() || !parsed.HttpOnly ||
		parsed.SameSite != http.SameSiteLaxMode || parsed.MaxAge != 60 || parsed.Path != "/" {
		t.Errorf("parsed = %+v, %v", parsed, err)
	}
	h := http.Header{"Set-Cookie": {"session=1; Path=/", " CONTAINERID=x"}}
	if !SetsCookie(h, "CONTAINERID") || SetsCookie(h, "other") {
		t.Error("SetsCookie does not tell which cookies a response sets")
	}
}

func TestDefaultCookieName(t *testing.T) {
	for in, want := range map[string]string{
		"web":                    "meshlet-web",
		"my.api_v2":              "meshlet-my.api_v2",
		"odd name(x)":            "meshlet-odd_name_x_",
		strings.Repeat("a", 100): "meshlet-" + strings.Repeat("a", maxCookieNameLen-len("meshlet-")),
	} {
		if got := defaultCookieName(in); got != want {
			t.Errorf("defaultCookieName(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzStickyCookies feeds arbitrary Cookie headers to the parser: it must
// not panic, must only ever report values that decode to an ID it was
// asked about, and must stay within its limits.
func FuzzStickyCookies(f *testing.F) {
	c := newCookieCodec("web", "CONTAINERID", nil)
	good := c.id("n", "a")
	for _, s := range []string{
		"CONTAINERID=" + good.String(),
		"a=b; CONTAINERID=\"" + good.String() + "\"",
		"CONTAINERID=;CONTAINERID==;;;",
		"CONTAINERID=" + strings.Repeat("A", 22),
		"\x00\xff; CONTAINERID=\xff\xfe",
		strings.Repeat("CONTAINERID=1;", 20),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		calls := 0
		StickyCookies(http.Header{"Cookie": {line}}, "CONTAINERID", func(id StickyID) bool {
			calls++
			if len(id.String()) != stickyValueLen {
				t.Fatalf("reported an ID of the wrong size: %q", id)
			}
			if !strings.Contains(line, id.String()) {
				t.Fatalf("reported %q, which is not in %q", id, line)
			}
			return id == good
		})
		if calls > maxStickyCookies {
			t.Fatalf("looked at %d cookies, limit %d", calls, maxStickyCookies)
		}
		id, ok := parseStickyValue(line)
		if ok && id.String() != strings.Trim(line, `"`) {
			t.Fatalf("parseStickyValue(%q) = %q: not a round trip", line, id)
		}
	})
}

// BenchmarkStickyPerRequest is the work stickiness adds to a request: find
// and decode the cookie among a browser's usual others and look it up; and,
// for a new client, write the Set-Cookie.
func BenchmarkStickyPerRequest(b *testing.B) {
	set := buildSet(endpointsN(8), nil, newCookieCodec("web", "CONTAINERID", nil))
	h := http.Header{"Cookie": {"_ga=GA1.2.3.4; session=abcdef0123456789; CONTAINERID=" + set.ids[5].String() + "; theme=dark"}}
	b.Run("pinned", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			found := -1
			StickyCookies(h, "CONTAINERID", func(id StickyID) bool {
				i, ok := set.sticky[id]
				found = i
				return ok
			})
			if found != 5 {
				b.Fatal("not found")
			}
		}
	})
	b.Run("set-cookie", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = set.codec.setCookie(set.ids[3], 3600)
		}
	})
}
