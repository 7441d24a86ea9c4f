package integration

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
)

var vipRange = netip.MustParsePrefix("127.77.0.0/16")

// The app resolves mesh names to VIPs and unknown mesh names to NXDOMAIN,
// through its own resolver address: the rules capture its queries.
func TestDNSAnswersMeshNames(t *testing.T) {
	w := startWorld(t, meshlab.Options{})

	for _, network := range []string{"udp", "tcp"} {
		vip := resolveVIP(t, w, "web.local")
		if !vipRange.Contains(vip) {
			t.Errorf("web.local → %s, not in %s", vip, vipRange)
		}
		if again := resolveVIP(t, w, "WEB.Local"); again != vip {
			t.Errorf("WEB.Local → %s, want the same VIP as web.local (%s)", again, vip)
		}
		if other := resolveVIP(t, w, "web.service.consul"); other != vip {
			t.Errorf("web.service.consul → %s, want %s", other, vip)
		}
		resp := query(t, w, "nosuch.local", dns.TypeA, network)
		if resp.Rcode != dns.RcodeNameError {
			t.Errorf("%s: nosuch.local rcode %s, want NXDOMAIN", network, dns.RcodeToString[resp.Rcode])
		}
		resp = query(t, w, "web.local", dns.TypeAAAA, network)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
			t.Errorf("%s: AAAA web.local: rcode %s with %d answers, want NOERROR and none", network, dns.RcodeToString[resp.Rcode], len(resp.Answer))
		}
	}

	// The app's libc resolver takes the same path.
	out, err := w.App.Run(context.Background(), "getent", "ahostsv4", "web.local")
	if err != nil || !strings.Contains(out, "127.77.") {
		t.Errorf("getent ahostsv4 web.local: %q, %v", out, err)
	}
}

// A name outside the mesh is answered by the app's own resolver (a test
// server of the lab), asked exactly once per query: meshlet's forwarded query
// is not captured by its own rules.
func TestDNSForwardsOtherNames(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	for i, network := range []string{"udp", "tcp"} {
		resp := query(t, w, "outside.example", dns.TypeA, network)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Fatalf("%s: outside.example: rcode %s, %d answers", network, dns.RcodeToString[resp.Rcode], len(resp.Answer))
		}
		if a := resp.Answer[0].(*dns.A).A; !a.Equal(net.IP(meshlab.OutsideAddr.AsSlice())) {
			t.Errorf("%s: outside.example → %s, want %s from the test resolver", network, a, meshlab.OutsideAddr)
		}
		if n := w.Resolver.Count("outside.example"); n != i+1 {
			t.Errorf("after %d queries the test resolver saw %d (a loop would show more, a leak elsewhere fewer)", i+1, n)
		}
	}
	// NXDOMAIN from the resolver comes back unchanged.
	if resp := query(t, w, "nothing.invalid", dns.TypeA, "udp"); resp.Rcode != dns.RcodeNameError {
		t.Errorf("nothing.invalid: rcode %s, want the resolver's NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
}

// curl http://web.local/ from the unchanged app reaches every instance, with
// the Host header the app used and X-Forwarded-* added.
func TestRequestsSpreadOverInstances(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx := context.Background()
	seen := map[string]int{}
	for i := 0; i < 30; i++ {
		out, err := w.Curl(ctx, "http://web.local/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		seen[strings.TrimSpace(out)]++
	}
	t.Logf("30 requests: %v", seen)
	for _, inst := range w.Instances {
		if seen[inst.Name] < 5 {
			t.Errorf("%s got %d of 30 requests, want round-robin's share (10)", inst.Name, seen[inst.Name])
		}
	}

	headers, err := w.Curl(ctx, "-D", "-", "-o", "/dev/null", "http://web.local/some/path?q=1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"X-Seen-Host: web.local", "X-Seen-Forwarded-For: " + w.App.IP.String(), "X-Seen-Forwarded-Host: web.local", "X-Seen-Forwarded-Proto: http"} {
		if !strings.Contains(headers, want) {
			t.Errorf("instance did not see %q; response headers:\n%s", want, headers)
		}
	}
}

// An app running as root and one running as an ordinary user are both
// intercepted; meshlet's own connections are not (its marked sockets skip
// the rules).
func TestInterceptsAppAsRootAndUserButNotMeshlet(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx := context.Background()
	// The lab's resolver answers NXDOMAIN for web.local: a success proves the
	// query was captured.
	if out, err := w.Curl(ctx, "http://web.local/"); err != nil || !strings.HasPrefix(out, "web-") {
		t.Errorf("as root: %q, %v", out, err)
	}
	out, err := w.App.Run(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://web.local/")
	if err != nil || !strings.HasPrefix(out, "web-") {
		t.Errorf("as uid 65534: %q, %v", out, err)
	}
	// meshlet's forwarded query went out once and came back: its socket
	// matched the mark rule and was let through.
	if resp := query(t, w, "marked.example", dns.TypeA, "udp"); resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("marked.example: %s", dns.RcodeToString[resp.Rcode])
	}
	rules, err := w.App.Run(ctx, "iptables", "-t", "nat", "-L", "MESHLET_OUTPUT", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	var markLine string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "RETURN") && strings.Contains(l, "mark match") {
			markLine = l
		}
	}
	if f := strings.Fields(markLine); len(f) == 0 || f[0] == "0" {
		t.Errorf("the mark rule let no packet through; chain:\n%s", rules)
	}
}

// A check going critical takes the instance out of rotation within 2 s; an
// instance killed outright stops getting traffic, and no request fails.
func TestUnhealthyAndKilledInstancesLeaveRotation(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vip := resolveVIP(t, w, "web.local")
	sick, dead := w.Instances[1], w.Instances[2]

	// Load runs across the change: 100 requests/s for 6 s.
	hitsc := make(chan []hit, 1)
	go func() { hitsc <- load(ctx, w, vip, 600, 10*time.Millisecond) }()
	time.Sleep(time.Second)

	// Turn web-2's probe failing and note when Consul says critical.
	resp, err := w.ConsulHost.HTTPClient(5*time.Second).Post(sick.URL("/admin/health?state=fail"), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var critical time.Time
	for critical.IsZero() && ctx.Err() == nil {
		checks, _, err := w.Consul.Health().Checks("web", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range checks {
			if c.ServiceID == sick.Name && c.Status == "critical" {
				critical = time.Now()
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if critical.IsZero() {
		t.Fatal("check never went critical")
	}
	hits := <-hitsc
	var last time.Time
	for _, h := range hits {
		if h.instance == sick.Name {
			last = h.at
		}
	}
	t.Logf("while %s's check went critical: %v; its last request came %v after Consul showed critical (polled every 10 ms; negative: before)",
		sick.Name, countBy(hits), last.Sub(critical).Round(time.Millisecond))
	if last.Sub(critical) > 2*time.Second {
		t.Errorf("%s still got traffic %v after its check went critical", sick.Name, last.Sub(critical))
	}
	if c := countBy(hits); c["error"] > 0 || c[sick.Name] == 0 || c[dead.Name] == 0 {
		t.Errorf("before the kill: %v; want no errors and every instance served before its turn", c)
	}

	// Kill web-3 outright, keep sending: nothing fails (a failed dial is
	// retried on another instance) and after Consul notices it gets nothing.
	dead.Proc.Kill()
	hits = load(ctx, w, vip, 400, 10*time.Millisecond) // 4 s
	c := countBy(hits)
	t.Logf("after killing %s: %v", dead.Name, c)
	for k, n := range c {
		if k != w.Instances[0].Name {
			t.Errorf("%d requests ended as %q; want all on %s", n, k, w.Instances[0].Name)
		}
	}
	if err := w.WaitPassing(ctx, "web", 1); err != nil {
		t.Error(err)
	}
}

// Traffic to a service with no healthy instance gets a fast 503 with a
// reason; an unparseable request gets 400.
func TestNoHealthyInstanceAndBadRequests(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1})
	ctx := context.Background()
	vip := resolveVIP(t, w, "web.local")
	resp, err := w.ConsulHost.HTTPClient(5*time.Second).Post(w.Instances[0].URL("/admin/health?state=fail"), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := w.WaitPassing(ctx, "web", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the blocking query's answer
	out, err := w.Curl(ctx, "-w", "%{http_code}", "http://web.local/")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, "503") || !strings.Contains(out, "no healthy instance") {
		t.Errorf("no healthy instance: got %q, want a 503 with a reason", out)
	}

	// Garbage that starts like HTTP but is not: 400 from meshlet.
	var reply string
	err = w.App.Do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(vip.String(), "80"), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\nHost web.local no colon\r\n\r\n"))
		buf := make([]byte, 512)
		n, _ := c.Read(buf)
		reply = string(buf[:n])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(reply, "HTTP/1.1 400") {
		t.Errorf("malformed request: got %q, want 400", reply)
	}
	// meshlet is still serving.
	if code, _, err := w.AdminGet(ctx, "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("healthz after bad input: %d, %v", code, err)
	}
}
