package integration

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// SIGTERM removes every rule; SIGKILL leaves them, and the next start
// repairs them to exactly one set.
func TestRulesAfterStopKillAndRestart(t *testing.T) {
	w := startWorld(t, meshlab.Options{})
	ctx := context.Background()
	first := meshletLines(natRules(t, w))
	jumps := 0
	for _, l := range first {
		if strings.HasPrefix(l, "-A OUTPUT ") {
			jumps++
		}
	}
	if jumps != 1 || len(first) < 5 {
		t.Fatalf("after start: %d jumps, rules:\n%s", jumps, strings.Join(first, "\n"))
	}
	show, err := w.App.Run(ctx, bins.Meshlet, "intercept", "show")
	if err != nil || !strings.Contains(show, "MESHLET_OUTPUT") {
		t.Errorf("meshlet intercept show: %q, %v", show, err)
	}

	w.Meshlet.Signal(syscall.SIGTERM)
	if exited, err := w.Meshlet.Wait(20 * time.Second); !exited || err != nil {
		t.Fatalf("after SIGTERM: exited=%v err=%v\n%s", exited, err, w.Meshlet.Output())
	}
	if left := meshletLines(natRules(t, w)); len(left) > 0 {
		t.Errorf("after SIGTERM these remain:\n%s", strings.Join(left, "\n"))
	}

	restart := func() {
		t.Helper()
		var err error
		if w.Meshlet, err = w.StartMeshlet(); err != nil {
			t.Fatal(err)
		}
		if err := w.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	w.Meshlet.Kill()
	if got := meshletLines(natRules(t, w)); !slices.Equal(got, first) {
		t.Errorf("after SIGKILL the rules should still be there:\n%s", strings.Join(got, "\n"))
	}
	restart()
	if got := meshletLines(natRules(t, w)); !slices.Equal(got, first) {
		t.Errorf("after SIGKILL and restart: want exactly the first set\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(first, "\n"))
	}
	if out, err := w.Curl(ctx, "http://web.local/"); err != nil || !strings.HasPrefix(out, "web-") {
		t.Errorf("after restart: %q, %v", out, err)
	}

	// The init-container commands: remove, then install twice = one set.
	for _, args := range [][]string{{"intercept", "remove"}, {"intercept", "install"}, {"intercept", "install"}} {
		if out, err := w.App.Run(ctx, bins.Meshlet, args...); err != nil {
			t.Fatalf("meshlet %v: %v %s", args, err, out)
		}
	}
	if got := meshletLines(natRules(t, w)); !slices.Equal(got, first) {
		t.Errorf("after intercept remove/install/install:\n%s", strings.Join(got, "\n"))
	}
}

// A request in flight when SIGTERM arrives still completes; meshlet exits 0.
func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1})
	ctx := context.Background()
	vip := resolveVIP(t, w, "web.local")
	done := make(chan hit, 1)
	go func() { done <- getVia(ctx, w.App.HTTPClient(10*time.Second), vip, "web.local", "/slow?ms=1500") }()
	time.Sleep(400 * time.Millisecond)
	w.Meshlet.Signal(syscall.SIGTERM)
	h := <-done
	if h.err != nil || h.status != http.StatusOK {
		t.Errorf("in-flight request: status %d, err %v; want 200", h.status, h.err)
	}
	if exited, err := w.Meshlet.Wait(15 * time.Second); !exited || err != nil {
		t.Errorf("meshlet: exited=%v err=%v", exited, err)
	}
}

// With Consul unreachable meshlet still starts, is alive, and says why it is
// not ready.
func TestConsulUnreachableAtStart(t *testing.T) {
	w := startWorld(t, meshlab.Options{NoMeshlet: true})
	ctx := context.Background()
	var err error
	w.Meshlet, err = w.App.Start("meshlet", nil, bins.Meshlet, "run", "--consul", "127.0.0.1:1", "--resolv-conf", w.AppResolv, "--state-dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var code int
	var body string
	// The admin server starts first; wait until only Consul is missing.
	for i := 0; i < 100; i++ {
		code, body, err = w.AdminGet(ctx, "/readyz")
		if err == nil && !strings.Contains(body, "not bound") && !strings.Contains(body, "not installed") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "consul") {
		t.Errorf("/readyz: %d %q %v; want 503 naming consul", code, body, err)
	}
	if code, _, err := w.AdminGet(ctx, "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz: %d %v; want 200", code, err)
	}
	if resp := query(t, w, "web.local", dns.TypeA, "udp"); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("web.local while Consul is unreachable: %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	// Names outside the mesh still work.
	if resp := query(t, w, "still.example", dns.TypeA, "udp"); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("still.example: %s", dns.RcodeToString[resp.Rcode])
	}
}

// Wrong settings are refused with a one-line error naming the setting, and
// leave no rule behind.
func TestBadSettingsAreRefused(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1, NoMeshlet: true})
	ctx := context.Background()
	host, err := w.Lab.AddHost("bad")
	if err != nil {
		t.Fatal(err)
	}
	// Take the outbound port, as another program would.
	ln, err := host.Listen("tcp", "127.0.0.1:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	tests := []struct {
		name string
		argv []string
		want string
	}{
		{"bad CIDR", []string{bins.Meshlet, "run", "--vip-cidr", "127.77.0.0/40"}, "--vip-cidr"},
		{"port in use", []string{bins.Meshlet, "run", "--consul", w.ConsulAddr(), "--resolv-conf", w.AppResolv}, "--outbound-listen"},
		{"no permission", []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
			bins.Meshlet, "run", "--consul", w.ConsulAddr(), "--resolv-conf", w.AppResolv, "--admin-listen", "127.0.0.1:15100"}, "--mark"},
		{"missing resolv.conf", []string{bins.Meshlet, "run", "--resolv-conf", "/nonexistent/resolv.conf"}, "--resolv-conf"},
	}
	for _, tt := range tests {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		cmd := host.Command(cctx, tt.argv[0], tt.argv[1:]...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		lastLine := lines[len(lines)-1]
		if exitCode(err) <= 0 {
			t.Errorf("%s: exit %v, want non-zero", tt.name, err)
		}
		if !strings.Contains(lastLine, tt.want) || !strings.HasPrefix(lastLine, "meshlet: ") {
			t.Errorf("%s: last line %q, want a one-line error naming %s", tt.name, lastLine, tt.want)
		}
		out, err := host.Run(ctx, "iptables-save", "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		if left := meshletLines(out); len(left) > 0 {
			t.Errorf("%s: rules left behind:\n%s", tt.name, strings.Join(left, "\n"))
		}
	}
	_ = exec.ErrNotFound
}

// Garbage sent to the DNS port gets no crash: the server answers afterwards.
func TestMalformedDNSDoesNotStopServer(t *testing.T) {
	w := startWorld(t, meshlab.Options{Instances: 1})
	garbage := [][]byte{
		{},
		{0x00},
		{0x12, 0x34, 0x01, 0x00, 0x00, 0x01}, // header cut short
		{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff}, // bad name
		[]byte(strings.Repeat("\xff", 600)),
	}
	err := w.App.Do(func() error {
		c, err := net.Dial("udp", net.JoinHostPort(w.DNSHost.IP.String(), "53"))
		if err != nil {
			return err
		}
		defer c.Close()
		for _, g := range garbage {
			c.Write(g)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if vip := resolveVIP(t, w, "web.local"); !vipRange.Contains(vip) {
		t.Errorf("after garbage: web.local → %s", vip)
	}
	if code, _, err := w.AdminGet(context.Background(), "/healthz"); err != nil || code != 200 {
		t.Errorf("healthz: %d %v", code, err)
	}
}
