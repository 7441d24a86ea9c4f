// Package meshlab builds the standard meshlet topology on a netlab network:
// a Consul host, instances of a service registered in Consul with HTTP
// checks, a DNS host that stands for the app's own resolver, and an app host
// running meshlet. Tests, the demo and the benchmarks share it.
package meshlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/integration/netlab"
)

// Subnet is the lab network. It exists only inside the lab's namespaces.
var Subnet = netip.MustParsePrefix("10.77.0.0/24")

// Options shape a world.
type Options struct {
	Service   string   // service name of the instances; default "web"
	Instances int      // how many instances to start; default 3
	Meshlet   []string // extra arguments for `meshlet run` on the app host
	NoMeshlet bool     // do not start meshlet (the caller starts it)
	// InstanceTags are the Consul tags of the instances Start makes, in
	// order (web-1 gets InstanceTags[0]); missing entries: none.
	InstanceTags [][]string
	// PersistentConsul runs Consul as a one-node server with a data
	// directory instead of -dev, so registrations survive StopConsul and
	// StartConsul (it takes a few seconds longer to elect itself).
	PersistentConsul bool
}

// World is a running topology.
type World struct {
	Bins Binaries
	Lab  *netlab.Lab
	Opts Options

	ConsulHost *netlab.Host
	ConsulProc *netlab.Proc
	Consul     *api.Client // reaches Consul from inside the Consul host

	consulPaused bool // by PauseConsul: continued before anything else on Close

	DNSHost   *netlab.Host
	Resolver  *TestResolver
	App       *netlab.Host
	AppResolv string // the app's resolv.conf (pointing at DNSHost)
	Meshlet   *netlab.Proc

	Instances []*Instance
}

// Instance is one instance of the service.
type Instance struct {
	Name string // also its Consul service ID
	Tags []string
	Host *netlab.Host
	Proc *netlab.Proc
}

// URL returns the instance's direct URL for path.
func (i *Instance) URL(path string) string { return fmt.Sprintf("http://%s:8080%s", i.Host.IP, path) }

// Start builds the world. On error everything made so far is removed.
func Start(ctx context.Context, bins Binaries, opts Options) (w *World, err error) {
	if opts.Service == "" {
		opts.Service = "web"
	}
	if opts.Instances == 0 {
		opts.Instances = 3
	}
	lab, err := netlab.New(Subnet)
	if err != nil {
		return nil, err
	}
	w = &World{Bins: bins, Lab: lab, Opts: opts}
	defer func() {
		if err != nil {
			w.Close()
			w = nil
		}
	}()

	if w.ConsulHost, err = lab.AddHost("consul"); err != nil {
		return w, err
	}
	if w.DNSHost, err = lab.AddHost("dns"); err != nil {
		return w, err
	}
	if w.App, err = lab.AddHost("app"); err != nil {
		return w, err
	}
	if err = w.startConsul(ctx); err != nil {
		return w, err
	}
	if w.Resolver, err = StartTestResolver(w.DNSHost); err != nil {
		return w, err
	}
	if w.AppResolv, err = w.App.WriteResolvConf(w.DNSHost.IP); err != nil {
		return w, err
	}
	for i := 1; i <= opts.Instances; i++ {
		if _, err = w.AddInstance(ctx, fmt.Sprintf("%s-%d", opts.Service, i)); err != nil {
			return w, err
		}
	}
	if err = w.WaitPassing(ctx, opts.Service, opts.Instances); err != nil {
		return w, err
	}
	if !opts.NoMeshlet {
		if w.Meshlet, err = w.StartMeshlet(opts.Meshlet...); err != nil {
			return w, err
		}
		if err = w.WaitReady(ctx); err != nil {
			return w, err
		}
	}
	return w, nil
}

// ConsulAddr is the address meshlet and others use to reach Consul.
func (w *World) ConsulAddr() string { return w.ConsulHost.IP.String() + ":8500" }

// StopConsul kills the Consul agent at once, as a crash or a cut-off would.
func (w *World) StopConsul() {
	if w.ConsulProc != nil {
		w.ConsulProc.Kill() // SIGKILL ends a paused process too
		w.consulPaused = false
	}
}

// PauseConsul stops the Consul agent's process with SIGSTOP: its sockets
// stay open and the kernel still accepts connections, but nothing answers,
// as with a paused container or a hung process. ResumeConsul (or Close)
// lets it go on. Calls through w.Consul hang meanwhile.
func (w *World) PauseConsul() error {
	if w.ConsulProc == nil {
		return errors.New("pausing consul: it is not running")
	}
	if err := w.ConsulProc.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pausing consul: %w", err)
	}
	w.consulPaused = true
	// SIGSTOP is delivered asynchronously: wait until the process is stopped.
	return Poll(context.Background(), 5*time.Second, "consul to stop", func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.ConsulProc.Cmd.Process.Pid))
		if err != nil {
			return StopPolling(err)
		}
		// The state follows the command name, which is in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i < 0 || !strings.HasPrefix(string(b[i:]), ") T") {
			return errors.New("not stopped yet")
		}
		return nil
	})
}

// ResumeConsul continues the Consul agent stopped by PauseConsul.
func (w *World) ResumeConsul() error {
	if w.ConsulProc == nil || !w.consulPaused {
		return nil
	}
	if err := w.ConsulProc.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resuming consul: %w", err)
	}
	w.consulPaused = false
	return nil
}

// StartConsul starts the Consul agent again after StopConsul and waits for
// it to lead. Without Options.PersistentConsul it comes back empty.
func (w *World) StartConsul(ctx context.Context) error { return w.startConsul(ctx) }

func (w *World) startConsul(ctx context.Context) error {
	args := []string{w.Bins.Consul, "agent", "-node", "consul",
		"-bind", w.ConsulHost.IP.String(), "-client", "0.0.0.0",
		"-hcl", "disable_update_check = true", "-log-level", "warn"}
	if w.Opts.PersistentConsul {
		args = append(args, "-server", "-bootstrap-expect", "1", "-data-dir", filepath.Join(w.Lab.Dir(), "consul-data"))
	} else {
		args = append(args, "-dev")
	}
	var err error
	w.ConsulProc, err = w.ConsulHost.Start("consul", []string{"CHECKPOINT_DISABLE=1"}, args...)
	if err != nil {
		return err
	}
	if w.Consul == nil {
		cfg := api.DefaultNonPooledConfig()
		cfg.Address = w.ConsulAddr()
		cfg.Transport.DialContext = w.ConsulHost.DialContext
		cfg.Transport.Proxy = nil
		if w.Consul, err = api.NewClient(cfg); err != nil {
			return err
		}
	}
	return Poll(ctx, 60*time.Second, "consul to elect itself leader", func() error {
		select {
		case <-w.ConsulProc.Done():
			return StopPolling(fmt.Errorf("consul exited: %s", Tail(w.ConsulProc.Output())))
		default:
		}
		leader, err := w.Consul.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return errors.New("no leader yet")
		}
		return nil
	})
}

// AddInstance starts one more instance in a host of its own and registers it
// in Consul with an HTTP check every second.
func (w *World) AddInstance(ctx context.Context, name string) (*Instance, error) {
	return w.AddInstanceMeta(name, nil)
}

// Register (re-)registers an instance in Consul.
func (w *World) Register(inst *Instance) error { return w.RegisterMeta(inst, nil) }

// WaitPassing waits until service has exactly n passing instances.
func (w *World) WaitPassing(ctx context.Context, service string, n int) error {
	return Poll(ctx, 30*time.Second, fmt.Sprintf("%d passing instances of %s", n, service), func() error {
		entries, _, err := w.Consul.Health().Service(service, "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != n {
			return fmt.Errorf("%d passing", len(entries))
		}
		return nil
	})
}

// StartMeshlet starts `meshlet run` on the app host, pointed at the lab's
// Consul and the app's resolv.conf.
func (w *World) StartMeshlet(extra ...string) (*netlab.Proc, error) {
	args := append([]string{w.Bins.Meshlet, "run",
		"--consul", w.ConsulAddr(),
		"--resolv-conf", w.AppResolv,
		"--state-dir", filepath.Join(w.Lab.Dir(), "state-app"),
		"--log-level", "debug",
	}, extra...)
	return w.App.Start("meshlet", nil, args...)
}

// AdminGet fetches a path from meshlet's admin server on the app host.
func (w *World) AdminGet(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := w.App.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WaitReady waits for meshlet's /readyz on the app host.
func (w *World) WaitReady(ctx context.Context) error {
	return Poll(ctx, 30*time.Second, "meshlet to be ready", func() error {
		if w.Meshlet != nil {
			select {
			case <-w.Meshlet.Done():
				return StopPolling(fmt.Errorf("meshlet exited: %s", Tail(w.Meshlet.Output())))
			default:
			}
		}
		code, body, err := w.AdminGet(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
}

// Curl runs curl in the app host, the way an unchanged app would make a
// request, and returns its standard output.
func (w *World) Curl(ctx context.Context, args ...string) (string, error) {
	return w.App.Run(ctx, "curl", append([]string{"-sS", "--max-time", "5", "--noproxy", "*"}, args...)...)
}

// Close removes the world.
func (w *World) Close() error {
	if w == nil || w.Lab == nil {
		return nil
	}
	// A stopped Consul dies of SIGKILL too, but its clients' connections
	// and the test's own calls are released sooner when it runs again.
	w.ResumeConsul()
	return w.Lab.Close()
}

// Binaries are the programs a world runs.
type Binaries struct {
	Meshlet, Consul, WebInstance string
}

// Build compiles meshlet and the test web instance into dir, and finds
// Consul: $MESHLET_CONSUL_BIN, or the project's scripts/consul.sh (which
// builds it once and caches it).
func Build(ctx context.Context, dir string) (Binaries, error) {
	root, err := RepoRoot(ctx)
	if err != nil {
		return Binaries{}, err
	}
	b := Binaries{
		Meshlet:     filepath.Join(dir, "meshlet"),
		WebInstance: filepath.Join(dir, "webinstance"),
	}
	for out, pkg := range map[string]string{b.Meshlet: ".", b.WebInstance: "./integration/testbin/webinstance"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("building %s: %w: %s", pkg, err, o)
		}
	}
	b.Consul = os.Getenv("MESHLET_CONSUL_BIN")
	if b.Consul == "" {
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "consul.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return b, fmt.Errorf("getting consul with scripts/consul.sh: %w", err)
		}
		b.Consul = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(b.Consul); err != nil {
		return b, fmt.Errorf("consul binary: %w", err)
	}
	return b, nil
}
