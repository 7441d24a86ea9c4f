package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/meshlet/meshlet/intercept"
)

const usage = `meshlet: a sidecar that gives an unchanged app service discovery and load balancing.

Usage:
  meshlet run [flags]                      run the sidecar (flags: meshlet run -h)
  meshlet health [--admin-listen A] [--timeout D]
                                           exit 0 if the sidecar is ready, else 1 with the reason
                                           (a compose healthcheck for images without curl)
  meshlet wait [--admin-listen A] [--timeout D]
                                           block until the sidecar is ready (for an app's entrypoint)
  meshlet status [--admin-listen A] [--watch]
                                           services, instances, health and counters as a table
  meshlet intercept install|remove|show [flags]
                                           manage the iptables rules alone (e.g. from an init container);
                                           takes the same flags as run
  meshlet inject [-o OUT] [--check] [--image IMG] [--consul ADDR] compose.yaml
                                           write the compose file with a meshlet sidecar beside each service
  meshlet version
`

// Version is set at build time with -ldflags "-X github.com/meshlet/meshlet/agent.Version=...".
// Without it, `meshlet version` tells what the Go toolchain recorded.
var Version = "dev"

func buildInfo() *debug.BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return bi
}

// versionString is the version a user reports with a bug: the release
// when one was stamped, else the commit the binary was built from (marked
// "+dirty" when the tree had changes), and the Go version either way.
func versionString(stamped string, bi *debug.BuildInfo) string {
	if bi == nil {
		return stamped
	}
	v := stamped
	if v == "dev" {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		switch {
		case rev != "":
			v = "dev-" + rev[:min(12, len(rev))]
			if modified == "true" {
				v += "+dirty"
			}
		case bi.Main.Version != "" && bi.Main.Version != "(devel)":
			v = bi.Main.Version // go install ...@version
		}
	}
	return v + " (" + bi.GoVersion + ")"
}

// Main runs the meshlet command line and returns the exit code.
func Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runCommand(args[1:], getenv, stderr)
	case "health":
		return healthCommand(args[1:], getenv, stdout, stderr)
	case "wait":
		return waitCommand(args[1:], getenv, stdout, stderr)
	case "status":
		return statusCommand(args[1:], getenv, stdout, stderr)
	case "intercept":
		return interceptCommand(args[1:], getenv, stdout, stderr)
	case "inject":
		return injectCommand(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "meshlet %s\n", versionString(Version, buildInfo()))
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meshlet: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func runCommand(args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := ParseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet: %v\n", err)
		return 2
	}
	// SERVICE_<port>_NAME and friends have names not known in advance, so
	// they are enumerated from the process environment rather than asked
	// of getenv.
	if err := cfg.LoadRegistration(os.Environ(), hostname(getenv)); err != nil {
		fmt.Fprintf(stderr, "meshlet: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)

	// The first SIGTERM or SIGINT drains; a second one skips the rest of
	// the drain.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	hardStop := make(chan struct{})
	go func() {
		s := <-sigs
		log.Info("signal received", "signal", s.String())
		stop()
		<-sigs
		close(hardStop)
	}()

	if err := Run(ctx, hardStop, cfg, log); err != nil {
		log.Error("meshlet failed", "err", err)
		fmt.Fprintf(stderr, "meshlet: %v\n", err)
		return 1
	}
	return 0
}

func interceptCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "meshlet intercept: want install, remove or show\n")
		return 2
	}
	verb := args[0]
	cfg, err := ParseConfig(args[1:], getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet: %v\n", err)
		return 2
	}
	ipt, err := intercept.NewIPTables()
	if err != nil {
		fmt.Fprintf(stderr, "meshlet intercept %s: %v\n", verb, err)
		return 1
	}
	m, err := intercept.NewManager(interceptConfig(cfg), ipt)
	if err != nil {
		fmt.Fprintf(stderr, "meshlet intercept %s: %v\n", verb, err)
		return 2
	}
	switch verb {
	case "install":
		err = m.Install()
		if err != nil {
			m.Remove()
		}
	case "remove":
		err = m.Remove()
		// The strict mode's rules too, which a killed `meshlet run` may
		// have left.
		if s, serr := intercept.NewStrict(ipt); serr == nil {
			err = errors.Join(err, s.Remove())
		}
	case "show":
		var out string
		out, err = m.Show()
		fmt.Fprint(stdout, out)
	default:
		fmt.Fprintf(stderr, "meshlet intercept: unknown action %q (want install, remove or show)\n", verb)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet intercept %s: %v\n", verb, err)
		return 1
	}
	return 0
}

// hostname makes default service IDs unique per container: Docker sets
// HOSTNAME to the container's (short ID by default), and a sidecar sharing
// the app's network namespace gets the app's.
func hostname(getenv func(string) string) string {
	if h := getenv("HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
