// Package netlab builds small test networks out of Linux network namespaces:
// a bridge in a "hub" namespace and one veth from it to each host namespace.
// Nothing is added to the machine's root namespace, and Close removes every
// namespace, process and file the lab made.
//
// It is used by the integration tests, the demo and the benchmarks, so that
// all three run the same topology.
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Prefix starts the name of every namespace a lab makes, so that leftovers of
// a killed run can be recognised (see Sweep).
const Prefix = "mlt-"

// Lab is one test network.
type Lab struct {
	id     string
	subnet netip.Prefix
	hub    string
	dir    string // logs and per-lab files

	mu    sync.Mutex
	hosts []*Host
	procs []*Proc
	next  byte // last octet of the next host address
}

// New creates the hub namespace and its bridge. The caller must Close the lab.
// Hosts get addresses from subnet (a /24; the lab's namespaces are isolated,
// so the same subnet may be used by several labs at once).
func New(subnet netip.Prefix) (*Lab, error) {
	if !subnet.Addr().Is4() || subnet.Bits() != 24 {
		return nil, fmt.Errorf("lab subnet %s: want an IPv4 /24", subnet)
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	// The creator's pid is part of every name, so Sweep can tell a dead
	// lab's namespaces from those of a lab that is still running.
	id := fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	dir, err := os.MkdirTemp("", "meshlet-lab-"+id+"-")
	if err != nil {
		return nil, err
	}
	l := &Lab{id: id, subnet: subnet.Masked(), hub: Prefix + id + "-hub", dir: dir, next: 1}
	if err := l.addNS(l.hub); err != nil {
		l.Close()
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", "br0", "type", "bridge"},
		{"link", "set", "br0", "up"},
	} {
		if err := ipIn(l.hub, args...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Dir is a directory that lives as long as the lab (logs, generated files).
func (l *Lab) Dir() string { return l.dir }

// Hosts returns the hosts added so far.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// AddHost creates a namespace joined to the hub's bridge as eth0, with the
// next free address of the subnet and loopback up.
func (l *Lab) AddHost(name string) (*Host, error) {
	l.mu.Lock()
	idx := len(l.hosts)
	if l.next >= 254 {
		l.mu.Unlock()
		return nil, errors.New("lab is full")
	}
	l.next++
	oct := l.next
	l.mu.Unlock()

	base := l.subnet.Addr().As4()
	base[3] = oct
	h := &Host{lab: l, Name: name, NS: fmt.Sprintf("%s%s-%s", Prefix, l.id, name), IP: netip.AddrFrom4(base)}
	if len(h.NS) > 40 {
		return nil, fmt.Errorf("host name %q too long", name)
	}
	if err := l.addNS(h.NS); err != nil {
		return nil, err
	}
	hubEnd := fmt.Sprintf("vh%d", idx)
	steps := [][]string{
		{"-n", l.hub, "link", "add", hubEnd, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"-n", l.hub, "link", "set", hubEnd, "master", "br0"},
		{"-n", l.hub, "link", "set", hubEnd, "up"},
		{"-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.IP, l.subnet.Bits()), "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, fmt.Errorf("adding host %s: %w", name, err)
		}
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

func (l *Lab) addNS(ns string) error {
	if err := ip("netns", "add", ns); err != nil {
		return err
	}
	return ipIn(ns, "link", "set", "lo", "up")
}

// Close stops every process the lab started, deletes its namespaces and
// their /etc/netns files, and removes its directory unless keepDir is set
// by KeepLogs. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	hosts := l.hosts
	l.hosts = nil
	l.mu.Unlock()

	for _, p := range procs {
		p.Kill()
	}
	var errs []error
	for _, h := range hosts {
		os.RemoveAll(filepath.Join("/etc/netns", h.NS))
		if err := ip("netns", "del", h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	if l.hub != "" {
		if err := ip("netns", "del", l.hub); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if os.Getenv("MESHLET_KEEP_LAB_LOGS") == "" {
		os.RemoveAll(l.dir)
	}
	return errors.Join(errs...)
}

// Sweep deletes namespaces left by labs whose process died without Close.
// Only namespaces with our Prefix and the pid of a process that is gone are
// touched, so labs of other running tests are left alone.
func Sweep() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		pid, _, _ := strings.Cut(strings.TrimPrefix(f[0], Prefix), "-")
		if _, err := os.Stat("/proc/" + pid); err == nil || pid == "" {
			continue // its lab is still running
		}
		// Kill whatever still runs inside before deleting it.
		if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
		os.RemoveAll(filepath.Join("/etc/netns", f[0]))
		if err := ip("netns", "del", f[0]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ipIn(ns string, args ...string) error {
	return ip(append([]string{"-n", ns}, args...)...)
}

func ip(args ...string) error {
	out, err := exec.CommandContext(context.Background(), "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
