package agent

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// statusCommand is `meshlet status`: a table of what the sidecar routes,
// read from /v1/state; with --watch it redraws every second until
// interrupted. Exit 1 when the sidecar cannot be reached, 2 on bad flags.
func statusCommand(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("meshlet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	adminDef := "127.0.0.1:15000"
	if v := getenv("MESHLET_ADMIN_LISTEN"); v != "" {
		adminDef = v
	}
	admin := fs.String("admin-listen", adminDef, "address of the sidecar's admin server (env MESHLET_ADMIN_LISTEN)")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the sidecar's answer")
	watch := fs.Bool("watch", false, "redraw every second until interrupted")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	base, err := adminBase(*admin)
	if err != nil {
		fmt.Fprintf(stderr, "meshlet status: %v\n", err)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "meshlet status: --timeout: must be positive")
		return 2
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:             nil, // the admin server is local; never through a proxy from the environment
		DialContext:       (&net.Dialer{Timeout: time.Second}).DialContext,
		DisableKeepAlives: true,
	}}
	fetch := func() (*state, error) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		return fetchState(ctx, client, base)
	}
	if !*watch {
		st, err := fetch()
		if err != nil {
			fmt.Fprintf(stderr, "meshlet status: %v\n", err)
			return 1
		}
		renderStatus(stdout, *admin, st, time.Now())
		return 0
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		st, err := fetch()
		var b strings.Builder
		b.WriteString("\x1b[H\x1b[2J") // home, clear: one redraw per second
		if err != nil {
			fmt.Fprintf(&b, "meshlet %s at %s: %v\n", *admin, time.Now().Format("15:04:05"), err)
		} else {
			renderStatus(&b, *admin, st, time.Now())
		}
		io.WriteString(stdout, b.String())
		select {
		case <-sigs:
			return 0
		case <-tick.C:
		}
	}
}

// adminBase is the URL of the admin server at admin (IP:PORT); a server
// on all addresses is reached on loopback.
func adminBase(admin string) (string, error) {
	ap, err := netip.ParseAddrPort(admin)
	if err != nil {
		return "", fmt.Errorf("--admin-listen: %q is not IP:PORT", admin)
	}
	addr := ap.Addr()
	if addr.IsUnspecified() {
		addr = netip.IPv6Loopback()
		if ap.Addr().Is4() {
			addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	return "http://" + netip.AddrPortFrom(addr, ap.Port()).String(), nil
}

func fetchState(ctx context.Context, client *http.Client, base string) (*state, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/state", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the sidecar's admin server: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/v1/state: %s", resp.Status)
	}
	var st state
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("reading /v1/state: %w", err)
	}
	return &st, nil
}

// statusWidth is the width renderStatus keeps to: a terminal's default.
const statusWidth = 80

// renderStatus writes st as an operator reads it in a terminal, in at
// most statusWidth columns.
func renderStatus(w io.Writer, admin string, st *state, now time.Time) {
	p := func(format string, args ...any) {
		io.WriteString(w, clip(fmt.Sprintf(format, args...), statusWidth)+"\n")
	}
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	p("meshlet %s at %s: %s", admin, now.Format("15:04:05"), ready)
	for _, why := range st.NotReady {
		wrap(w, "  not ready: ", why)
	}
	if c := st.Consul; c != nil {
		switch {
		case c.FailStatic:
			p("consul: FAIL-STATIC, not answering for %s (%d watch errors)", seconds(c.SinceAnswerSeconds), c.WatchErrors)
		case c.SinceAnswerSeconds > 0:
			p("consul: not answered yet, for %s (%d watch errors)", seconds(c.SinceAnswerSeconds), c.WatchErrors)
		default:
			p("consul: answering (%d watch errors)", c.WatchErrors)
		}
	}
	for _, n := range st.Notes {
		wrap(w, "  ", n)
	}
	if m := st.MTLS; m != nil {
		switch c := m.Certs; {
		case c == nil:
			p("mtls: %s, no identity (outbound plaintext)", m.Mode)
		case c.LeafURI == "":
			p("mtls: %s as %s, waiting for its leaf", m.Mode, c.Service)
		default:
			p("mtls: %s as %s, leaf %s until %s, %d roots", m.Mode, c.Service, c.LeafSerial, c.LeafNotAfter.Format("2006-01-02 15:04"), c.Roots)
		}
	}
	if len(st.Services) == 0 {
		p("")
		p("no service in use yet")
	}
	for _, s := range st.Services {
		p("")
		pol := parsePolicy(s.Policy)
		route := pol["balance"]
		if pol["sticky"] == "cookie" {
			route += ", sticky cookie " + pol["sticky-cookie"]
		}
		if route != "" {
			route = "  " + route
		}
		p("service %s  vip %s%s", s.Name, s.VIP, route)
		if c := s.Counters; c != nil {
			classes := make([]string, 0, len(c.ByClass))
			for k := range c.ByClass {
				classes = append(classes, k)
			}
			sort.Strings(classes)
			var by []string
			for _, k := range classes {
				by = append(by, fmt.Sprintf("%s %d", k, c.ByClass[k]))
			}
			line := fmt.Sprintf("  requests %d", c.Requests)
			if len(by) > 0 {
				line += " (" + strings.Join(by, ", ") + ")"
			}
			line += fmt.Sprintf("  retries %d", c.Retries)
			if c.RetriesRefused > 0 {
				line += fmt.Sprintf(" (%d refused)", c.RetriesRefused)
			}
			p("%s", line)
			if pol["sticky"] == "cookie" || c.StickyRouted+c.StickyPins+c.StickyRepins > 0 {
				p("  sticky: %d routed by cookie, %d new pins, %d re-pins", c.StickyRouted, c.StickyPins, c.StickyRepins)
			}
			if c.TCPOpened > 0 {
				p("  raw tcp: %d connections, %d open", c.TCPOpened, c.TCPOpened-min(c.TCPClosed, c.TCPOpened))
			}
		}
		insts := s.Instances
		if len(insts) == 0 {
			// A meshlet older than the instances field: the endpoint list.
			for _, e := range s.Endpoints {
				id, addr, _ := strings.Cut(e, " ")
				insts = append(insts, stateInstance{ID: id, Addr: addr, Status: "passing"})
			}
		}
		if len(insts) == 0 {
			p("  no healthy instance")
			continue
		}
		p("  %-18s %-21s %-12s %5s %7s %5s %3s", "INSTANCE", "ADDRESS", "HEALTH", "INFL", "REQS", "FAIL", "EJ")
		for _, in := range insts {
			health := in.Status
			if in.Ejected {
				health = "ejected"
				if in.EjectedForSeconds > 0 {
					health += " " + seconds(in.EjectedForSeconds)
				}
			}
			p("  %-18s %-21s %-12s %5d %7d %5d %3d", clip(in.ID, 18), clip(in.Addr, 21), clip(health, 12),
				in.InFlight, in.Requests, in.Failures, in.Ejections)
		}
	}
	if len(st.Registrations) > 0 {
		p("")
		p("REGISTERED APP SERVICES")
		p("  %-18s %-21s %-12s %s", "SERVICE", "ADDRESS", "CHECK", "IN CONSUL")
		for _, r := range st.Registrations {
			in := "yes"
			if !r.Registered {
				in = "no"
				if r.Error != "" {
					in += ": " + r.Error
				}
			}
			p("  %-18s %-21s %-12s %s", clip(r.Name, 18), clip(net.JoinHostPort(r.Address, strconv.Itoa(r.Port)), 21), r.Status, in)
			if r.Output != "" {
				wrap(w, "    ", r.Output)
			}
			if r.SidecarID != "" {
				p("    mTLS inbound :%d, connect sidecar %s", r.SidecarPort, r.SidecarID)
			}
		}
	}
}

// parsePolicy splits the policy string of /v1/state into its settings.
func parsePolicy(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// seconds writes a duration in seconds the way a person reads it.
func seconds(s float64) string {
	return (time.Duration(s) * time.Second).Round(time.Second).String()
}

// clip cuts s to n columns, marking the cut.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// wrap writes text after prefix, folded at word boundaries to fit
// statusWidth, continuation lines indented like the first.
func wrap(w io.Writer, prefix, text string) {
	indent := strings.Repeat(" ", utf8.RuneCountInString(prefix))
	line := prefix
	empty := true
	for _, word := range strings.Fields(text) {
		if !empty && utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) > statusWidth {
			io.WriteString(w, line+"\n")
			line, empty = indent, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	io.WriteString(w, clip(line, statusWidth)+"\n")
}
