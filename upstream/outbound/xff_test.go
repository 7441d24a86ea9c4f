package outbound

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// TestXFFNamesTheAppsAddress: with ClientAddr set, an instance sees the
// app's address in X-Forwarded-For, not the loopback one the app came
// from; a chain the app sent (one line or several) is kept and ours is
// appended; on the forwarder and on the net/http path.
func TestXFFNamesTheAppsAddress(t *testing.T) {
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every line, so that a second X-Forwarded-For would show.
		w.Header().Set("X-Seen-XFF", strings.Join(r.Header.Values("X-Forwarded-For"), " | "))
		w.Header().Set("X-Seen-Proto", r.Proto)
	}))
	t.Cleanup(inst.Close)
	for _, tc := range []struct {
		name   string
		client netip.Addr
		want   string // what the instance sees for no X-Forwarded-For from the app
	}{
		{"ClientAddr v4", netip.MustParseAddr("10.77.0.4"), "10.77.0.4"},
		{"ClientAddr v6", netip.MustParseAddr("fd00:77::4"), "fd00:77::4"},
		{"no ClientAddr", netip.Addr{}, "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, front := webMesh(t, func(c *upstream.Config) { c.ClientAddr = tc.client }, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(inst)))
			for _, path := range []struct{ name, version, extra string }{
				{"forwarder", "HTTP/1.1", ""},
				{"net/http HTTP/1.0", "HTTP/1.0", "Connection: keep-alive\r\n"},
				{"net/http Expect", "HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 0\r\n"},
			} {
				for _, xff := range []struct{ sent, want string }{
					{"", tc.want},
					{"X-Forwarded-For: 203.0.113.7\r\n", "203.0.113.7, " + tc.want},
					{"X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n", "203.0.113.7, 198.51.100.2, " + tc.want},
					{"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.2\r\n", "203.0.113.7, 198.51.100.2, " + tc.want},
				} {
					app := upstreamtest.DialApp(t, front)
					app.Send("GET / " + path.version + "\r\nHost: web.local\r\n" + path.extra + xff.sent + "\r\n")
					resp, _ := app.Read("GET")
					if resp.StatusCode != 200 {
						t.Fatalf("%s: status %d", path.name, resp.StatusCode)
					}
					if got := resp.Header.Get("X-Seen-XFF"); got != xff.want {
						t.Errorf("%s, app sent %q: instance saw X-Forwarded-For %q, want %q", path.name, xff.sent, got, xff.want)
					}
				}
			}
		})
	}
}
