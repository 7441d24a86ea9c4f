package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// query asks the app's own resolver (the lab's DNS host) from inside the
// app's namespace, as the app's libc would: meshlet's rules must capture it.
func query(t *testing.T, w *meshlab.World, name string, qtype uint16, network string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	var resp *dns.Msg
	err := w.App.Do(func() error {
		c := &dns.Client{Net: network, Timeout: 3 * time.Second}
		var err error
		resp, _, err = c.Exchange(m, net.JoinHostPort(w.DNSHost.IP.String(), "53"))
		return err
	})
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return resp
}

// resolveVIP returns the A record meshlet gives for name.
func resolveVIP(t *testing.T, w *meshlab.World, name string) netip.Addr {
	t.Helper()
	resp := query(t, w, name, dns.TypeA, "udp")
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("%s: rcode %s, %d answers; want one A", name, dns.RcodeToString[resp.Rcode], len(resp.Answer))
	}
	a, ok := resp.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("%s: answer %v is not an A record", name, resp.Answer[0])
	}
	addr, _ := netip.AddrFromSlice(a.A.To4())
	return addr
}

// hit is one request's outcome as the app saw it.
type hit struct {
	at       time.Time // when the response (or error) came
	status   int
	instance string
	err      error
}

// getVia makes one HTTP request from the app's namespace to a VIP with the
// Host header the app would send.
func getVia(ctx context.Context, client *http.Client, vip netip.Addr, host, path string) hit {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vip.String()+path, nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return hit{at: time.Now(), err: err}
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return hit{at: time.Now(), status: resp.StatusCode, instance: strings.TrimSpace(resp.Header.Get("X-Instance")), err: err}
}

// load sends requests every interval until ctx ends or n were sent, each on
// a new connection, and returns their outcomes in order. It is bounded by
// both n and ctx.
func load(ctx context.Context, w *meshlab.World, vip netip.Addr, n int, interval time.Duration) []hit {
	client := w.App.HTTPClient(5 * time.Second)
	var hits []hit
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; i < n; i++ {
		hits = append(hits, getVia(ctx, client, vip, "web.local", "/"))
		select {
		case <-ctx.Done():
			return hits
		case <-tick.C:
		}
	}
	return hits
}

// natRules returns the nat table of the app's namespace as iptables-save prints it.
func natRules(t *testing.T, w *meshlab.World) string {
	t.Helper()
	out, err := w.App.Run(context.Background(), "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// meshletLines returns the lines of iptables-save output that mention meshlet.
func meshletLines(rules string) []string {
	var out []string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "MESHLET") {
			out = append(out, l)
		}
	}
	return out
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func countBy(hits []hit) map[string]int {
	m := map[string]int{}
	for _, h := range hits {
		switch {
		case h.err != nil:
			m["error"]++
		case h.status != http.StatusOK:
			m[fmt.Sprintf("status %d", h.status)]++
		default:
			m[h.instance]++
		}
	}
	return m
}
