package intercept

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests run the real iptables command against the real kernel, inside
// a network namespace each test creates and deletes; they never touch the
// machine's root namespace.

// requireRoot skips a kernel test when not root, except in CI, which runs
// as root and must not silently skip.
func requireRoot(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, cmd := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, "the "+cmd+" command")
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("kernel test needs %s (CI=true, so not skipping)", strings.Join(missing, " and "))
	}
	t.Skipf("kernel test needs %s", strings.Join(missing, " and "))
}

// newNetns creates a throwaway namespace with loopback up and deletes it
// when the test ends.
func newNetns(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	ns := "mlt-icpt-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	nsExec(t, ns, "ip", "link", "set", "lo", "up")
	return ns
}

// nsExec runs a command in ns through `ip netns exec` and returns its output.
func nsExec(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on a goroutine whose OS thread has entered ns, and fails
// the test with fn's error. The thread is never unlocked, so it dies with
// the goroutine and no other goroutine ever runs in ns by accident. Sockets
// fn creates stay in ns; commands fn runs inherit ns (os/exec forks from
// the calling thread), which fn checks before trusting it with iptables.
func inNetns(t *testing.T, ns string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// checkExecInheritsNetns makes sure, from inside inNetns, that a child
// process lands in ns and not in the root namespace, before any iptables
// command runs from this thread.
func checkExecInheritsNetns(ns string) error {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		return err
	}
	out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
	if err != nil {
		return fmt.Errorf("reading the child's namespace: %w", err)
	}
	if got, wantLink := strings.TrimSpace(string(out)), fmt.Sprintf("net:[%d]", want.Ino); got != wantLink {
		return fmt.Errorf("child process runs in %s, want %s: refusing to run iptables", got, wantLink)
	}
	return nil
}

// kernelListeners are meshlet's DNS and outbound listeners, opened on
// ports the kernel picks.
type kernelListeners struct {
	dnsUDP   net.PacketConn
	dnsTCP   *net.TCPListener
	outbound *net.TCPListener
}

func openListeners() (kernelListeners, error) {
	var l kernelListeners
	var err error
	if l.outbound, err = listenTCP("127.0.0.1:0"); err != nil {
		return l, err
	}
	if l.dnsUDP, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		return l, err
	}
	// The namespace is fresh, so the UDP port is free in TCP too.
	l.dnsTCP, err = listenTCP(l.dnsUDP.LocalAddr().String())
	return l, err
}

func listenTCP(addr string) (*net.TCPListener, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func (l kernelListeners) config(mark uint32, uid int) Config {
	return Config{
		DNSPort:      uint16(l.dnsUDP.LocalAddr().(*net.UDPAddr).Port),
		OutboundPort: uint16(l.outbound.Addr().(*net.TCPAddr).Port),
		VIPCIDR:      netip.MustParsePrefix("127.77.0.0/16"),
		Mark:         mark,
		ExcludeUID:   uid,
	}
}

func (l kernelListeners) close() {
	for _, c := range []interface{ Close() error }{l.dnsUDP, l.dnsTCP, l.outbound} {
		if c != nil {
			c.Close()
		}
	}
}

// dialRedirected connects to dst with d and returns the original
// destination the listener ln reads from the accepted connection.
func dialRedirected(d *net.Dialer, ln *net.TCPListener, dst string) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp4", dst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dialing %s: %w", dst, err)
	}
	defer c.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	s, err := ln.AcceptTCP()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("accepting the redirected connection to %s: %w", dst, err)
	}
	defer s.Close()
	return OriginalDst(s)
}

// wantRefused dials dst with d and expects no redirect: nothing listens on
// the VIP itself, so the kernel refuses.
func wantRefused(d *net.Dialer, dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp4", dst)
	if err == nil {
		c.Close()
		return fmt.Errorf("dial %s succeeded: it was redirected", dst)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("dial %s = %v, want connection refused", dst, err)
	}
	return nil
}

// countLines counts the lines of out equal to line.
func countLines(out, line string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == line {
			n++
		}
	}
	return n
}

func TestKernelInstallRedirectRemove(t *testing.T) {
	ns := newNetns(t)
	const otherRule = "-A OUTPUT -d 10.9.9.9/32 -p tcp -j RETURN"
	nsExec(t, ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9/32", "-p", "tcp", "-j", "RETURN")

	var l kernelListeners
	t.Cleanup(func() { l.close() })
	var cfg Config
	var m *Manager
	inNetns(t, ns, func() error {
		if err := checkExecInheritsNetns(ns); err != nil {
			return err
		}
		var err error
		if l, err = openListeners(); err != nil {
			return err
		}
		cfg = l.config(0x1e, -1)
		ipt, err := NewIPTables()
		if err != nil {
			return err
		}
		if m, err = NewManager(cfg, ipt); err != nil {
			return err
		}
		for i := range 2 {
			if err := m.Install(); err != nil {
				return fmt.Errorf("Install #%d: %w", i+1, err)
			}
		}
		return m.Verify()
	})

	out := nsExec(t, ns, "iptables", "-t", "nat", "-S")
	wantLines := []string{"-N MESHLET_OUTPUT", "-A OUTPUT -j MESHLET_OUTPUT", otherRule}
	for _, r := range cfg.Rules() {
		wantLines = append(wantLines, "-A MESHLET_OUTPUT "+strings.Join(r, " "))
	}
	for _, w := range wantLines {
		if n := countLines(out, w); n != 1 {
			t.Errorf("iptables -t nat -S has %d copies of %q, want 1:\n%s", n, w, out)
		}
	}
	if strings.Index(out, "-A OUTPUT -j MESHLET_OUTPUT") > strings.Index(out, otherRule) {
		t.Errorf("our jump is not the first rule of OUTPUT:\n%s", out)
	}

	t.Run("redirects", func(t *testing.T) {
		inNetns(t, ns, func() error {
			var plain net.Dialer
			got, err := dialRedirected(&plain, l.outbound, "127.77.0.9:80")
			if err != nil {
				return err
			}
			if want := netip.MustParseAddrPort("127.77.0.9:80"); got != want {
				return fmt.Errorf("OriginalDst = %s, want %s", got, want)
			}
			got, err = dialRedirected(&plain, l.dnsTCP, "127.0.0.53:53")
			if err != nil {
				return err
			}
			if want := netip.MustParseAddrPort("127.0.0.53:53"); got != want {
				return fmt.Errorf("OriginalDst of TCP DNS = %s, want %s", got, want)
			}
			if err := wantRefused(MarkedDialer(cfg.Mark, 5*time.Second), "127.77.0.9:80"); err != nil {
				return fmt.Errorf("marked dialer: %w", err)
			}
			return checkUDPDNSRedirected(l.dnsUDP)
		})
	})

	t.Run("repairs", func(t *testing.T) {
		nsExec(t, ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-j", "MESHLET_OUTPUT")
		nsExec(t, ns, "iptables", "-t", "nat", "-A", "MESHLET_OUTPUT", "-p", "tcp", "-j", "RETURN")
		inNetns(t, ns, func() error {
			var drift *DriftError
			if err := m.Verify(); !errors.As(err, &drift) || len(drift.Problems) != 2 {
				return fmt.Errorf("Verify of damaged rules = %v, want 2 problems", err)
			}
			if err := m.Install(); err != nil {
				return err
			}
			return m.Verify()
		})
		out := nsExec(t, ns, "iptables", "-t", "nat", "-S")
		if n := countLines(out, "-A OUTPUT -j MESHLET_OUTPUT"); n != 1 {
			t.Errorf("after repair %d jumps, want 1:\n%s", n, out)
		}
		if strings.Contains(out, "-A MESHLET_OUTPUT -p tcp -j RETURN") {
			t.Errorf("after repair the stale rule is still there:\n%s", out)
		}
	})

	inNetns(t, ns, func() error {
		for i := range 2 {
			if err := m.Remove(); err != nil {
				return fmt.Errorf("Remove #%d: %w", i+1, err)
			}
		}
		if s, err := m.Show(); err != nil || s != "not installed" {
			return fmt.Errorf("Show after Remove = %q, %v", s, err)
		}
		var plain net.Dialer
		return wantRefused(&plain, "127.77.0.9:80")
	})
	out = nsExec(t, ns, "iptables", "-t", "nat", "-S")
	if strings.Contains(out, "MESHLET") {
		t.Errorf("after Remove something of ours remains:\n%s", out)
	}
	if countLines(out, otherRule) != 1 {
		t.Errorf("after Remove the unrelated rule %q is gone:\n%s", otherRule, out)
	}
}

// checkUDPDNSRedirected sends a datagram to a resolver address on port 53
// and expects it on meshlet's DNS socket instead.
func checkUDPDNSRedirected(dns net.PacketConn) error {
	c, err := net.Dial("udp4", "127.0.0.53:53")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		return err
	}
	dns.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _, err := dns.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("reading the redirected UDP DNS query: %w", err)
	}
	if string(buf[:n]) != "query" {
		return fmt.Errorf("DNS socket got %q, want %q", buf[:n], "query")
	}
	return nil
}

// TestKernelUIDExclusion checks the owner match: with our own uid
// excluded, our plain connections are not redirected.
func TestKernelUIDExclusion(t *testing.T) {
	ns := newNetns(t)
	var l kernelListeners
	t.Cleanup(func() { l.close() })
	inNetns(t, ns, func() error {
		if err := checkExecInheritsNetns(ns); err != nil {
			return err
		}
		var err error
		if l, err = openListeners(); err != nil {
			return err
		}
		ipt, err := NewIPTables()
		if err != nil {
			return err
		}
		m, err := NewManager(l.config(0, os.Geteuid()), ipt)
		if err != nil {
			return err
		}
		if err := m.Install(); err != nil {
			return err
		}
		var plain net.Dialer
		return wantRefused(&plain, "127.77.0.9:80")
	})
}
