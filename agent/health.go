package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// readyCheck asks a running sidecar's admin server whether it is ready.
type readyCheck struct {
	url     string
	timeout time.Duration
	client  *http.Client
}

// parseReadyFlags reads the flags shared by `meshlet health` and `meshlet
// wait`: where the admin server is, and how long to try.
func parseReadyFlags(cmd string, args []string, getenv func(string) string, timeoutEnv string, timeoutDef time.Duration, stderr io.Writer) (readyCheck, error) {
	fs := flag.NewFlagSet("meshlet "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	adminDef := "127.0.0.1:15000"
	if v := getenv("MESHLET_ADMIN_LISTEN"); v != "" {
		adminDef = v
	}
	if v := getenv(timeoutEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return readyCheck{}, fmt.Errorf("%s: %q is not a duration such as 5s", timeoutEnv, v)
		}
		timeoutDef = d
	}
	admin := fs.String("admin-listen", adminDef, "address of the sidecar's admin server (env MESHLET_ADMIN_LISTEN)")
	timeout := fs.Duration("timeout", timeoutDef, "how long to try (env "+timeoutEnv+")")
	if err := fs.Parse(args); err != nil {
		return readyCheck{}, err
	}
	if fs.NArg() > 0 {
		return readyCheck{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	ap, err := netip.ParseAddrPort(*admin)
	if err != nil {
		return readyCheck{}, fmt.Errorf("--admin-listen: %q is not IP:PORT", *admin)
	}
	if *timeout <= 0 {
		return readyCheck{}, errors.New("--timeout: must be positive")
	}
	// A server on all addresses is reached on loopback.
	addr := ap.Addr()
	if addr.IsUnspecified() {
		addr = netip.IPv6Loopback()
		if ap.Addr().Is4() {
			addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	return readyCheck{
		url:     "http://" + netip.AddrPortFrom(addr, ap.Port()).String() + "/readyz",
		timeout: *timeout,
		client: &http.Client{Transport: &http.Transport{
			Proxy:             nil, // the admin server is local; never go through a proxy from the environment
			DialContext:       (&net.Dialer{Timeout: time.Second}).DialContext,
			DisableKeepAlives: true,
		}},
	}, nil
}

// once asks /readyz once; reason says why not ready.
func (rc readyCheck) once(ctx context.Context) (ready bool, reason string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rc.url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := rc.client.Do(req)
	if err != nil {
		return false, fmt.Sprintf("cannot reach the sidecar's admin server: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	reason = strings.TrimSpace(string(body))
	if reason == "" {
		reason = resp.Status
	}
	return false, reason
}

// healthCommand is `meshlet health`: exit 0 when the sidecar is ready, 1
// with the reason otherwise, 2 on bad flags.
func healthCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	rc, err := parseReadyFlags("health", args, getenv, "MESHLET_HEALTH_TIMEOUT", 2*time.Second, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet health: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	ready, reason := rc.once(ctx)
	if !ready {
		fmt.Fprintf(stderr, "meshlet health: %s\n", oneLine(reason))
		return 1
	}
	fmt.Fprintln(stdout, "ready")
	return 0
}

// waitCommand is `meshlet wait`: it blocks until the sidecar is ready (exit
// 0) or the timeout passes (exit 1 with the last reason).
func waitCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	rc, err := parseReadyFlags("wait", args, getenv, "MESHLET_WAIT_TIMEOUT", 60*time.Second, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet wait: %v\n", err)
		return 2
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	var reason string
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		ready, why := rc.once(actx)
		acancel()
		// An attempt that the overall timeout cut short says only that;
		// the last one that got an answer says why the sidecar is not ready.
		if ctx.Err() == nil || reason == "" {
			reason = why
		}
		if ready {
			fmt.Fprintf(stderr, "meshlet wait: ready after %v\n", time.Since(start).Round(time.Millisecond))
			return 0
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(stderr, "meshlet wait: not ready after %v: %s\n", rc.timeout, oneLine(reason))
			return 1
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
