package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Host is one namespace of a lab, standing for a machine or a container.
type Host struct {
	lab  *Lab
	Name string     // short name given to AddHost
	NS   string     // namespace name, usable with `ip netns exec`
	IP   netip.Addr // address on the lab's bridge
}

// Do runs fn on an OS thread that has entered the host's namespace. Sockets
// fn creates belong to the namespace for their whole life, wherever they are
// used later. The thread is never returned to the Go scheduler: it ends with
// the goroutine, so no other goroutine ever runs in the wrong namespace.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// no UnlockOSThread: the thread exits with this goroutine.
		f, err := os.Open(filepath.Join("/run/netns", h.NS))
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", h.NS, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", h.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// DialContext dials from inside the host's namespace.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the host's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the host's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// HTTPClient returns a client whose connections start in the host's
// namespace. It does not use any proxy from the environment and does not
// keep connections alive, so each request is a new connection (as a curl
// loop would make).
func (h *Host) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       h.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// Command returns a command that runs inside the host's namespace (through
// `ip netns exec`, which also bind-mounts /etc/netns/NS/resolv.conf over
// /etc/resolv.conf when WriteResolvConf made one).
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs a command in the namespace and returns its combined output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	var buf bytes.Buffer
	cmd := h.Command(ctx, name, args...)
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	if err != nil {
		return buf.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), h.Name, err, strings.TrimSpace(buf.String()))
	}
	return buf.String(), nil
}

// WriteResolvConf makes the file `ip netns exec` shows the host's programs
// as /etc/resolv.conf, and returns its path. Close removes it.
func (h *Host) WriteResolvConf(nameservers ...netip.Addr) (string, error) {
	dir := filepath.Join("/etc/netns", h.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var b strings.Builder
	for _, ns := range nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	// A short timeout keeps a lab whose DNS is broken from hanging tests.
	b.WriteString("options timeout:2 attempts:2\n")
	path := filepath.Join(dir, "resolv.conf")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// Proc is a long-running process in a host.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // path of its combined stdout and stderr
	done chan struct{}
	err  error
}

// Start starts a process in the host; its output goes to a log file in the
// lab's directory. The lab kills it on Close if it still runs.
func (h *Host) Start(name string, env []string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(h.lab.dir, fmt.Sprintf("%s-%s-%d.log", h.Name, name, time.Now().UnixNano()))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = append(os.Environ(), env...)
	// Its own process group, so a terminal's Ctrl-C reaches the demo, which
	// then stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s in %s: %w", name, h.Name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, p)
	h.lab.mu.Unlock()
	return p, nil
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Wait waits up to d for the process to exit and returns its exit error.
func (p *Proc) Wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill stops the process and everything it started, at once, and waits
// for it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	// The whole process group: nginx's and HAProxy's workers outlive a
	// killed master, holding ports and inherited descriptors (a bench run
	// that failed left an nginx worker holding the bench's lock file).
	if err := syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
		p.Cmd.Process.Kill()
	}
	<-p.done
}

// Output returns what the process has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}
