package integration

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// Real resolver clients in the app's namespace (dig, glibc through
// getent, Python's socket module), each asking the app's own nameserver
// (the lab's DNS host) so that meshlet's rules must capture the query:
// mesh A, tag subsets, SRV, PTR, the TTL setting, and forwarded answers
// larger than 512 bytes over UDP with EDNS0 and over TCP after TC.
func TestDNSClients(t *testing.T) {
	w := startWorld(t, meshlab.Options{
		InstanceTags: [][]string{{"v1"}, {"v1"}, {"v2"}},
		Meshlet:      []string{"--dns-ttl", "7s"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dig := func(args ...string) string {
		t.Helper()
		out, err := w.App.Run(ctx, "dig", append([]string{"+time=3", "+tries=1"}, args...)...)
		if err != nil {
			t.Fatalf("dig %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	short := func(args ...string) []string {
		t.Helper()
		return strings.Fields(dig(append([]string{"+short"}, args...)...))
	}

	// A: a service and its subset, each a VIP of its own from the range.
	web := mustAddr(t, short("web.local", "A"))
	v2 := mustAddr(t, short("V2.web.local", "A"))
	vipRange := netip.MustParsePrefix("127.77.0.0/16")
	if !vipRange.Contains(web) || !vipRange.Contains(v2) || web == v2 {
		t.Fatalf("web.local %v, v2.web.local %v: want two VIPs of %v", web, v2, vipRange)
	}
	if got := mustAddr(t, short("v2.web.service.consul", "A")); got != v2 {
		t.Errorf("v2.web.service.consul %v, want v2.web.local's %v", got, v2)
	}

	// The TTL setting, on positive answers and in the SOA of NXDOMAIN.
	answer := dig("+noall", "+answer", "web.local", "A")
	if !regexp.MustCompile(`(?m)^web\.local\.\s+7\s+IN\s+A\s+` + regexp.QuoteMeta(web.String()) + `$`).MatchString(answer) {
		t.Errorf("web.local answer %q, want TTL 7", answer)
	}
	nx := dig("+noall", "+comments", "+authority", "v9.web.local", "A")
	if !strings.Contains(nx, "status: NXDOMAIN") ||
		!regexp.MustCompile(`(?m)^local\.\s+7\s+IN\s+SOA\s+\S+ \S+ \d+ \d+ \d+ \d+ 7$`).MatchString(nx) {
		t.Errorf("a tag no instance has: %q, want NXDOMAIN with an SOA of TTL and minimum 7", nx)
	}

	// SRV: the port Consul has (8080), the target, its VIP as additional.
	for _, name := range []string{"web.local", "_web._tcp.local"} {
		out := dig("+noall", "+answer", "+additional", name, "SRV")
		if !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(name)+`\.\s+7\s+IN\s+SRV\s+1 1 8080 web\.local\.$`).MatchString(out) ||
			!regexp.MustCompile(`(?m)^web\.local\.\s+7\s+IN\s+A\s+`+regexp.QuoteMeta(web.String())+`$`).MatchString(out) {
			t.Errorf("%s SRV: %q, want 1 1 8080 web.local. and its A %v", name, out, web)
		}
	}
	if got := short("v2.web.local", "SRV"); strings.Join(got, " ") != "1 1 8080 v2.web.local." {
		t.Errorf("v2.web.local SRV %q", got)
	}

	// PTR of the VIPs; another reverse name goes to the app's resolver.
	if got := short("-x", web.String()); strings.Join(got, " ") != "web.local." {
		t.Errorf("dig -x %v: %q, want web.local.", web, got)
	}
	if got := short("-x", v2.String()); strings.Join(got, " ") != "v2.web.local." {
		t.Errorf("dig -x %v: %q, want v2.web.local.", v2, got)
	}
	other := w.DNSHost.IP.String()
	if out := dig("-x", other); !strings.Contains(out, "status: NXDOMAIN") {
		t.Errorf("dig -x %s: %q, want the test resolver's NXDOMAIN", other, out)
	}
	if n := w.Resolver.Count(reverseName(w.DNSHost.IP)); n != 1 {
		t.Errorf("the test resolver saw %s %d times, want 1 (forwarded)", reverseName(w.DNSHost.IP), n)
	}

	// Large forwarded answers. With EDNS0 (dig's default, 1232 bytes) the
	// whole answer comes over UDP.
	before := forwardedQueries(t, w)
	out := dig("+bufsize=1232", meshlab.BigName, "A")
	if n := strings.Count(out, "\tA\t192.0.2."); n != meshlab.BigAnswers || strings.Contains(out, "Truncated") {
		t.Errorf("big answer over UDP with EDNS0: %d records, want %d, no truncation:\n%s", n, meshlab.BigAnswers, out)
	}
	if got := forwardedQueries(t, w) - before; got != 1 {
		t.Errorf("meshlet forwarded %d queries for one UDP lookup, want 1", got)
	}
	// Without EDNS0 the UDP answer is truncated; dig asks again over TCP,
	// which meshlet's rules capture too: meshlet forwards both.
	before = forwardedQueries(t, w)
	out = dig("+noedns", meshlab.BigName, "A")
	if n := strings.Count(out, "\tA\t192.0.2."); n != meshlab.BigAnswers || !strings.Contains(out, "Truncated, retrying in TCP mode") {
		t.Errorf("big answer without EDNS0: %d records (want %d), want dig's retry over TCP:\n%s", n, meshlab.BigAnswers, out)
	}
	if got := forwardedQueries(t, w) - before; got != 2 {
		t.Errorf("meshlet forwarded %d queries for a UDP lookup retried over TCP, want 2 (the TCP one captured)", got)
	}
	t.Logf("big answer: %d A records, UDP with EDNS0 whole, UDP without it truncated then TCP, all through meshlet", meshlab.BigAnswers)

	// A service registered after meshlet started is known on its first
	// lookup: meshlet asks the catalog then (--consul-catalog on-demand),
	// and dig asks once.
	late := &api.AgentServiceRegistration{ID: "late-1", Name: "late", Address: w.Instances[0].Host.IP.String(), Port: 8080}
	if err := w.Consul.Agent().ServiceRegister(late); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if vip := mustAddr(t, short("late.local", "A")); !vipRange.Contains(vip) || vip == web || vip == v2 {
		t.Errorf("late.local %v: want a VIP of its own", vip)
	}
	t.Logf("late.local, registered after meshlet started, resolved on its first lookup in %v", time.Since(start).Round(time.Millisecond))

	// glibc's resolver: forward and reverse.
	if out, err := w.App.Run(ctx, "getent", "ahosts", "v2.web.local"); err != nil || !strings.HasPrefix(out, v2.String()+" ") {
		t.Errorf("getent ahosts v2.web.local: %q, %v; want %v", out, err, v2)
	}
	if out, err := w.App.Run(ctx, "getent", "hosts", web.String()); err != nil || strings.Join(strings.Fields(out), " ") != web.String()+" web.local" {
		t.Errorf("getent hosts %v: %q, %v; want web.local", web, out, err)
	}

	// Python's socket module.
	py := fmt.Sprintf(`import socket
print(socket.gethostbyname("v2.web.local"))
print(socket.gethostbyaddr(%q)[0])
print(sorted({a[4][0] for a in socket.getaddrinfo("web.local", 80, proto=socket.IPPROTO_TCP)}))
`, v2.String())
	out, err := w.App.Run(ctx, "python3", "-c", py)
	want := fmt.Sprintf("%s\nv2.web.local\n['%s']\n", v2, web)
	if err != nil || out != want {
		t.Errorf("python3: %q, %v; want %q", out, err, want)
	}
}

// mustAddr parses the one address dig +short printed.
func mustAddr(t *testing.T, fields []string) netip.Addr {
	t.Helper()
	if len(fields) != 1 {
		t.Fatalf("dig printed %q, want one address", fields)
	}
	a, err := netip.ParseAddr(fields[0])
	if err != nil {
		t.Fatalf("dig printed %q: %v", fields[0], err)
	}
	return a
}

// reverseName is the in-addr.arpa. name of an IPv4 address.
func reverseName(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}

// forwardedQueries reads meshlet_dns_queries_total{kind="forwarded"}.
func forwardedQueries(t *testing.T, w *meshlab.World) int {
	t.Helper()
	_, body, err := w.AdminGet(context.Background(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^meshlet_dns_queries_total\{kind="forwarded"\} (\d+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no forwarded counter in /metrics")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
