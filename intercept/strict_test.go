package intercept

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestStrictProtectVerifyRemove(t *testing.T) {
	f := newFakeIPTables()
	f.mustRun("filter", "-A INPUT -s 10.9.9.9/32 -j ACCEPT", "-N MESHLET_INBOUND", "-A MESHLET_INBOUND -j ACCEPT", "-A INPUT -j MESHLET_INBOUND")
	s, err := NewStrict(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify before Protect = %v, want nil (nothing asked)", err)
	}
	for range 2 {
		if err := s.Protect(8080, 9090); err != nil {
			t.Fatal(err)
		}
	}
	want := `*filter
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N MESHLET_INBOUND
-A INPUT -j MESHLET_INBOUND
-A INPUT -s 10.9.9.9/32 -j ACCEPT
-A MESHLET_INBOUND -i lo -j RETURN
-A MESHLET_INBOUND -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset
-A MESHLET_INBOUND -p tcp -m tcp --dport 9090 -j REJECT --reject-with tcp-reset
`
	if got := f.dump(); !strings.Contains(got, want) {
		t.Errorf("after Protect (a stale chain and a misplaced jump before):\n%s\nwant\n%s", got, want)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify = %v", err)
	}
	f.mustRun("filter", "-A MESHLET_INBOUND -j ACCEPT", "-A INPUT -j MESHLET_INBOUND")
	err = s.Verify()
	if err == nil || !strings.Contains(err.Error(), "differ from the 3 wanted") || !strings.Contains(err.Error(), "have 2") {
		t.Errorf("Verify of damaged rules = %v", err)
	}
	for range 2 {
		if err := s.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.dump(); strings.Contains(got, "MESHLET") || !strings.Contains(got, "-A INPUT -s 10.9.9.9/32 -j ACCEPT") {
		t.Errorf("after Remove:\n%s", got)
	}
	if err := s.Protect(); err == nil {
		t.Error("Protect of no port succeeded")
	}
}

// Two namespaces joined by a veth pair: the caller's connection to the
// protected port is reset, the namespace's own connections pass, and
// other ports are untouched; Remove lets the caller in again.
func TestKernelStrict(t *testing.T) {
	app, caller := newNetns(t), newNetns(t)
	if out, err := exec.Command("ip", "link", "add", "mlt-s0", "netns", app, "type", "veth", "peer", "mlt-s1", "netns", caller).CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	nsExec(t, app, "ip", "addr", "add", "10.211.0.1/24", "dev", "mlt-s0")
	nsExec(t, app, "ip", "link", "set", "mlt-s0", "up")
	nsExec(t, caller, "ip", "addr", "add", "10.211.0.2/24", "dev", "mlt-s1")
	nsExec(t, caller, "ip", "link", "set", "mlt-s1", "up")

	var protected, other net.Listener
	inNetns(t, app, func() error {
		var err error
		if protected, err = net.Listen("tcp", ":8080"); err != nil {
			return err
		}
		other, err = net.Listen("tcp", ":8081")
		return err
	})
	defer protected.Close()
	defer other.Close()
	for _, ln := range []net.Listener{protected, other} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	dial := func(ns, addr string) error {
		var err error
		inNetns(t, ns, func() error {
			var c net.Conn
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return nil
		})
		return err
	}
	if err := dial(caller, "10.211.0.1:8080"); err != nil {
		t.Fatalf("before Protect: %v", err)
	}
	var s *Strict
	inNetns(t, app, func() error {
		if err := checkExecInheritsNetns(app); err != nil {
			return err
		}
		ipt, err := NewIPTables()
		if err != nil {
			return err
		}
		if s, err = NewStrict(ipt); err != nil {
			return err
		}
		if err := s.Protect(8080); err != nil {
			return err
		}
		return s.Verify()
	})
	for _, tc := range []struct {
		ns, addr string
		pass     bool
	}{
		{caller, "10.211.0.1:8080", false},
		{caller, "10.211.0.1:8081", true},
		{app, "127.0.0.1:8080", true},
		{app, "10.211.0.1:8080", true},
	} {
		start := time.Now()
		err := dial(tc.ns, tc.addr)
		if tc.pass != (err == nil) {
			t.Errorf("from %s to %s: %v, want passing=%v", tc.ns, tc.addr, err, tc.pass)
		}
		// Reset, not dropped: the caller learns it at once.
		if !tc.pass && (time.Since(start) > time.Second || !strings.Contains(fmt.Sprint(err), "refused")) {
			t.Errorf("from %s to %s: %v after %v, want refused at once", tc.ns, tc.addr, err, time.Since(start))
		}
	}
	inNetns(t, app, func() error { return s.Remove() })
	if out := nsExec(t, app, "iptables", "-S"); strings.Contains(out, "MESHLET") {
		t.Errorf("after Remove:\n%s", out)
	}
	if err := dial(caller, "10.211.0.1:8080"); err != nil {
		t.Errorf("after Remove: %v", err)
	}
}
