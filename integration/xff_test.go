package integration

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// seenXFF makes one request for web.local from host to vip, with the
// X-Forwarded-For the app sends (none if empty), over HTTP/1.1 (meshlet's
// forwarder) or HTTP/1.0 (its net/http path), and returns the
// X-Forwarded-For the instance saw.
func seenXFF(t *testing.T, ctx context.Context, host *netlab.Host, vip netip.Addr, version, sent string) string {
	t.Helper()
	c, err := host.DialContext(ctx, "tcp", net.JoinHostPort(vip.String(), "80"))
	if err != nil {
		t.Fatalf("dialing %s from %s: %v", vip, host.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET / " + version + "\r\nHost: web.local\r\n"
	if sent != "" {
		req += "X-Forwarded-For: " + sent + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatalf("sending: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s from %s: status %d (%s)", version, host.Name, resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
	}
	return resp.Header.Get("X-Seen-Forwarded-For")
}

// resolveOn resolves name as an app on host does: through the host's
// resolver, which its meshlet intercepts.
func resolveOn(t *testing.T, host *netlab.Host, resolver netip.Addr, name string) netip.Addr {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var resp *dns.Msg
	err := host.Do(func() error {
		var err error
		resp, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, net.JoinHostPort(resolver.String(), "53"))
		return err
	})
	if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("resolving %s on %s: %v %v", name, host.Name, err, resp)
	}
	a, ok := resp.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("%s on %s: answer %v is not an A record", name, host.Name, resp.Answer[0])
	}
	addr, _ := netip.AddrFromSlice(a.A.To4())
	return addr
}

// X-Forwarded-For names the app by its own address, never by the
// loopback one its connections to a VIP come from: a client-only sidecar
// by its namespace's address, a registering one by the address it
// registers the app with. A chain the app sent is kept, ours appended;
// on the forwarder (HTTP/1.1) and the net/http path (HTTP/1.0) alike.
func TestXForwardedForNamesTheApp(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	vip := resolveVIP(t, w, "web.local")
	app := w.App.IP.String()
	for _, version := range []string{"HTTP/1.1", "HTTP/1.0"} {
		if got := seenXFF(t, ctx, w.App, vip, version, ""); got != app {
			t.Errorf("%s, no X-Forwarded-For from the app: the instance saw %q, want the app host's %s", version, got, app)
		}
		if got, want := seenXFF(t, ctx, w.App, vip, version, "203.0.113.7"), "203.0.113.7, "+app; got != want {
			t.Errorf("%s, app sent 203.0.113.7: the instance saw %q, want %q", version, got, want)
		}
	}

	// A sidecar that registers its app at an address of its choosing
	// (say, one a NAT maps to it) names the app by that address.
	const advertised = "10.77.0.250"
	s := addSidecar(t, w, "shop1", []string{"SERVICE_NAME=shop", "SERVICE_CHECK_HTTP=/health"}, "--advertise-addr", advertised)
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	svip := resolveOn(t, s.Host, w.DNSHost.IP, "web.local")
	if got := seenXFF(t, ctx, s.Host, svip, "HTTP/1.1", ""); got != advertised {
		t.Errorf("from a sidecar advertising %s: the instance saw %q", advertised, got)
	}
	if out := s.Meshlet.Output(); !strings.Contains(out, "X-Forwarded-For names the app by its registered address") {
		t.Errorf("the sidecar's log does not say which address X-Forwarded-For names:\n%s", lastLines(out, 20))
	}
}
