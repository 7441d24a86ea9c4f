package upstream

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func TestClientIPForXFF(t *testing.T) {
	for _, tc := range []struct {
		client netip.Addr
		remote string
		want   string
	}{
		{netip.MustParseAddr("10.77.0.4"), "127.0.0.1:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "127.0.0.9:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "[::1]:4711", "10.77.0.4"},
		{netip.MustParseAddr("10.77.0.4"), "[::ffff:127.0.0.1]:4711", "10.77.0.4"},
		{netip.MustParseAddr("fd00::4"), "127.0.0.1:4711", "fd00::4"},
		{netip.MustParseAddr("::ffff:10.77.0.4"), "127.0.0.1:4711", "10.77.0.4"},
		// Not over loopback: the connection's own address is the app's.
		{netip.MustParseAddr("10.77.0.4"), "10.77.0.5:4711", "10.77.0.5"},
		{netip.MustParseAddr("10.77.0.4"), "[::ffff:10.77.0.5]:4711", "10.77.0.5"},
		// No ClientAddr: as before.
		{netip.Addr{}, "127.0.0.1:4711", "127.0.0.1"},
		{netip.Addr{}, "[::1]:4711", "::1"},
	} {
		cfg := Config{ClientAddr: tc.client, Consul: newFakeConsul(t).client(t)}
		cfg, err := cfg.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.clientIP(tc.remote); got != tc.want {
			t.Errorf("ClientAddr %v, RemoteAddr %s: net/http path names %q, want %q", tc.client, tc.remote, got, tc.want)
		}
		remote := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.remote))
		if got := string(cfg.appendClientIP(nil, remote)); got != tc.want {
			t.Errorf("ClientAddr %v, RemoteAddr %s: forwarder names %q, want %q", tc.client, tc.remote, got, tc.want)
		}
		if n := testing.AllocsPerRun(100, func() { cfg.appendClientIP(make([]byte, 0, 64)[:0], remote) }); n > 1 {
			t.Errorf("appendClientIP allocates %v times", n) // the one is the make
		}
	}
}

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
			_, _, front := webMesh(t, func(c *Config) { c.ClientAddr = tc.client }, instance(t, "web", "a", addrOf(inst)))
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
					app := dialApp(t, front)
					app.send("GET / " + path.version + "\r\nHost: web.local\r\n" + path.extra + xff.sent + "\r\n")
					resp, _ := app.read("GET")
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
