package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// With --mark 0 --exclude-uid, meshlet tells its own traffic apart by its
// uid alone (README, "Running it"): every other user's connections and DNS
// are captured, the excluded uid's are not. meshlet runs as root here, so
// root is the excluded uid and an ordinary user stands for the app.
func TestExcludeUIDWithoutMark(t *testing.T) {
	w := startWorld(t, meshlab.Options{Meshlet: []string{"--mark", "0", "--exclude-uid", "0"}})
	ctx := context.Background()

	// The app as uid 65534: its lookup and its request go through meshlet.
	out, err := w.App.Run(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"curl", "-sS", "--max-time", "5", "--noproxy", "*", "http://web.local/")
	if err != nil || !strings.HasPrefix(out, "web-") {
		t.Errorf("as uid 65534: %q, %v; want an instance's answer through meshlet", out, err)
	}
	// Outside names are forwarded by meshlet (uid 0, no mark) without being
	// captured again: the resolver sees the query exactly once.
	before := w.Resolver.Count("uid.example")
	out, err = w.App.Run(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"getent", "ahostsv4", "uid.example")
	if err != nil || !strings.Contains(out, meshlab.OutsideAddr.String()) {
		t.Errorf("getent uid.example as uid 65534: %q, %v", out, err)
	}
	if n := w.Resolver.Count("uid.example") - before; n < 1 || n > 2 {
		// getent may ask twice (A, then again on its own retry), never in a loop.
		t.Errorf("the test resolver saw uid.example %d times; want 1 or 2 (a loop would show more)", n)
	}

	// Root is the excluded uid: its DNS goes straight to the lab's resolver,
	// which knows no mesh names.
	if resp := query(t, w, "web.local", dns.TypeA, "udp"); resp.Rcode != dns.RcodeNameError {
		t.Errorf("web.local asked as the excluded uid: rcode %s with %d answers; want the lab resolver's NXDOMAIN (not captured)",
			dns.RcodeToString[resp.Rcode], len(resp.Answer))
	}
	rules := natRules(t, w)
	if !strings.Contains(rules, "--uid-owner 0") {
		t.Errorf("no uid rule in the nat table:\n%s", rules)
	}
	if strings.Contains(rules, "--mark") {
		t.Errorf("a mark rule although --mark 0:\n%s", rules)
	}
}
