package registration

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const netnsChildEnv = "MESHLET_SOCKADDR_NETNS_CHILD"

// TestAddressInNamespace runs the comparison with go-sockaddr/template again
// in a network namespace of its own, whose interfaces carry public, private,
// shared and IPv6 addresses and a default route, so that the public sources
// and the sorts have something to choose from. The test binary runs itself
// there through `ip netns exec`.
func TestAddressInNamespace(t *testing.T) {
	if os.Getenv(netnsChildEnv) != "" {
		inNamespace(t)
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root for a network namespace (CI=true, so not skipping)")
		}
		t.Skip("needs root for a network namespace")
	}
	ns := fmt.Sprintf("meshlet-sockaddr-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	in := func(args ...string) { ip(append([]string{"-n", ns}, args...)...) }
	in("link", "set", "lo", "up")
	// veth pairs, since the kernel may lack the dummy driver.
	in("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	in("link", "add", "ext1", "type", "veth", "peer", "name", "ext1p")
	for _, a := range [][2]string{
		{"eth0", "10.20.30.40/24"}, {"eth0", "1.2.3.4/24"}, {"eth0", "2a00:1450:4001::5/64"}, {"eth0", "fd12::5/64"},
		{"ext1", "100.64.0.9/10"}, {"ext1", "192.168.7.7/24"}, {"ext1", "8.8.4.100/24"},
	} {
		in("addr", "add", a[1], "dev", a[0], "nodad")
	}
	for _, l := range []string{"eth0", "eth0p", "ext1", "ext1p"} {
		in("link", "set", l, "up")
	}
	in("route", "add", "default", "via", "10.20.30.1", "dev", "eth0")

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run", "^TestAddressInNamespace$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in %s:\n%s", ns, out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestAddressInNamespace") {
		t.Fatalf("the checks in namespace %s failed or did not run: %v", ns, err)
	}
}

// inNamespace runs inside the namespace TestAddressInNamespace made.
func inNamespace(t *testing.T) {
	var accepted int
	for _, src := range sameAsSockaddr {
		ours, oursErr, theirs, theirsErr := evalBoth(src)
		if (oursErr == nil) != (theirsErr == nil) || ours != theirs {
			t.Errorf("%q: meshlet gives %q, %v; go-sockaddr gives %q, %v", src, ours, oursErr, theirs, theirsErr)
		}
		if oursErr == nil {
			accepted++
		}
	}
	if accepted < 50 {
		t.Errorf("only %d templates evaluated without error", accepted)
	}
	// What a user of --advertise-addr sees with these interfaces.
	for tmpl, want := range map[string]string{
		`{{ GetPrivateIP }}`:          "10.20.30.40",
		`{{ GetPublicIP }}`:           "1.2.3.4",
		`{{ GetInterfaceIP "ext1" }}`: "100.64.0.9", // the largest network first
		`{{ GetAllInterfaces | include "name" "ext1" | include "rfc" "1918" | attr "address" }}`:                                 "192.168.7.7",
		`{{ GetAllInterfaces | include "type" "IPv6" | include "flags" "forwardable" | exclude "rfc" "4193" | attr "address" }}`: "2a00:1450:4001::5",
		`{{ GetAllInterfaces | include "network" "100.64.0.0/10" | math "address" "+1" | attr "address" }}`:                      "100.64.0.10",
	} {
		got, err := Address(tmpl)
		if err != nil || got != netip.MustParseAddr(want) {
			t.Errorf("Address(%q) = %v, %v; want %s", tmpl, got, err, want)
		}
	}
}
