package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// compose runs the project's compose.yaml, exactly the file a user runs,
// with the local stand-ins of the public images passed through its variables.
type compose struct {
	t       *testing.T
	root    string
	project string
	env     []string
	argv    []string // "docker compose" or "docker-compose"
	file    string   // the compose file; default the project's compose.yaml
}

// newCompose finds the Docker engine and its compose tool, and the
// repository's root; without them it skips the test, or fails it under
// CI=true.
func newCompose(t *testing.T, project string) *compose {
	t.Helper()
	c := &compose{t: t, project: project}
	for _, argv := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			continue
		}
		if exec.Command(argv[0], append(argv[1:], "version")...).Run() == nil {
			c.argv = argv
			break
		}
	}
	if c.argv == nil || exec.Command("docker", "info").Run() != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the Docker engine or its compose tool is missing; CI must run this test")
		}
		t.Skip("no Docker engine with compose here")
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c.root = root
	return c
}

// standins makes the local stand-ins of the public images (once per test
// binary) and returns the variables that pass them to the Dockerfile and
// compose files.
func standins(t *testing.T, ctx context.Context, root string) []string {
	t.Helper()
	standinsOnce.Do(func() {
		start := time.Now()
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "docker-standins.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			standinsErr = fmt.Errorf("making the stand-in base images: %w", err)
			return
		}
		standinsEnv = strings.Fields(string(out))
		t.Logf("stand-in images ready in %v: %s", time.Since(start).Round(time.Second), strings.Join(standinsEnv, " "))
	})
	if standinsErr != nil {
		t.Fatal(standinsErr)
	}
	return append([]string(nil), standinsEnv...)
}

var (
	standinsOnce sync.Once
	standinsEnv  []string
	standinsErr  error
)

func (c *compose) run(ctx context.Context, args ...string) (string, error) {
	file := c.file
	if file == "" {
		file = filepath.Join(c.root, "compose.yaml")
	}
	argv := append(append([]string{}, c.argv[1:]...), append([]string{"-p", c.project, "-f", file}, args...)...)
	cmd := exec.CommandContext(ctx, c.argv[0], argv...)
	cmd.Dir = c.root
	cmd.Env = append(os.Environ(), c.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", c.argv[0], strings.Join(argv, " "), err, tailLines(string(out), 30))
	}
	return string(out), nil
}

// container is the name compose gives the first container of a service.
func (c *compose) container(ctx context.Context, service string) string {
	out, err := c.run(ctx, "ps", "-q", service)
	if err != nil || strings.TrimSpace(out) == "" {
		c.t.Fatalf("finding the container of %s: %v %s", service, err, out)
	}
	return strings.TrimSpace(strings.Split(strings.TrimSpace(out), "\n")[0])
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// clientLine is one line of a demo client's loop: time, status, instance.
type clientLine struct {
	at       time.Time
	status   int
	instance string
}

func clientLines(logs string) []clientLine {
	var out []clientLine
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "| "); i >= 0 { // compose's "name | " prefix
			line = line[i+2:]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		ts, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		code, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		cl := clientLine{at: time.Unix(0, int64(ts*1e9)), status: code}
		if len(f) > 2 {
			cl.instance = f[2]
		}
		out = append(out, cl)
	}
	return out
}

// The Docker scenario of the README, for real: compose.yaml with a Consul
// server, two restserver instances with sidecars that register them, and two
// unchanged curl clients with sidecars, one keeping cookies.
func TestDockerCompose(t *testing.T) {
	c := newCompose(t, fmt.Sprintf("mlt%d", os.Getpid()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c.env = append(standins(t, ctx, c.root), "REQUESTS=600")

	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := c.run(context.Background(), "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", logs)
		}
		if _, err := c.run(context.Background(), "down", "-t", "5", "-v", "--remove-orphans"); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})
	start := time.Now()
	if _, err := c.run(ctx, "up", "-d", "--build"); err != nil {
		t.Fatal(err)
	}
	t.Logf("built and started in %v", time.Since(start).Round(time.Second))
	if size, err := exec.Command("docker", "image", "inspect", "-f", "{{.Size}}", "meshlet:dev").Output(); err == nil {
		n, _ := strconv.ParseInt(strings.TrimSpace(string(size)), 10, 64)
		t.Logf("sidecar image meshlet:dev: %.1f MB", float64(n)/1e6)
	}

	// Both instances serve the plain client.
	var lines []clientLine
	deadline := time.Now().Add(2 * time.Minute)
	for {
		logs, _ := c.run(ctx, "logs", "--no-color", "restclient")
		lines = clientLines(logs)
		seen := map[string]bool{}
		for _, l := range lines {
			if l.status == 200 {
				seen[l.instance] = true
			}
		}
		if seen["restserver-1"] && seen["restserver-2"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reach both instances: %d lines, seen %v", len(lines), seen)
		}
		time.Sleep(time.Second)
	}

	// The cookie-keeping client stays on one instance.
	logs, _ := c.run(ctx, "logs", "--no-color", "restclient-sticky")
	sticky := map[string]int{}
	for _, l := range clientLines(logs) {
		if l.status == 200 {
			sticky[l.instance]++
		}
	}
	if len(sticky) != 1 {
		t.Errorf("the cookie-keeping client was served by %v; want one instance", sticky)
	}

	// Docker's embedded DNS answers non-mesh names through meshlet's capture.
	client, sidecar := c.container(ctx, "restclient"), c.container(ctx, "restclient-sidecar")
	dnsPackets := func() int {
		out, err := exec.CommandContext(ctx, "docker", "exec", sidecar, "iptables", "-t", "nat", "-L", "MESHLET_OUTPUT", "-v", "-n", "-x").Output()
		if err != nil {
			t.Fatalf("reading the sidecar's rules: %v", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "udp dpt:53") {
				n, _ := strconv.Atoi(strings.Fields(l)[0])
				return n
			}
		}
		t.Fatalf("no DNS rule in:\n%s", out)
		return 0
	}
	before := dnsPackets()
	if out, err := exec.CommandContext(ctx, "docker", "exec", client, "getent", "ahostsv4", "consul").CombinedOutput(); err != nil {
		t.Errorf("resolving consul in the client: %v %s", err, out)
	}
	if after := dnsPackets(); after <= before {
		t.Errorf("resolving consul did not go through meshlet's DNS rule (%d → %d packets)", before, after)
	}

	// Kill an instance under the client's loop: traffic moves to the other.
	victim := c.container(ctx, "restserver-2")
	killed := time.Now()
	if out, err := exec.CommandContext(ctx, "docker", "kill", victim).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v %s", err, out)
	}
	// Consul's view, from inside the client (through meshlet's DNS).
	var critical time.Time
	for time.Since(killed) < 90*time.Second && critical.IsZero() {
		out, err := exec.CommandContext(ctx, "docker", "exec", client, "curl", "-s", "http://consul:8500/v1/health/service/restserver?passing").Output()
		var entries []json.RawMessage
		if err == nil && json.Unmarshal(out, &entries) == nil && len(entries) == 1 {
			critical = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
	if critical.IsZero() {
		t.Fatal("Consul never dropped the killed instance from the passing set")
	}
	time.Sleep(10 * time.Second)
	logs, _ = c.run(ctx, "logs", "--no-color", "restclient")
	var during, after, afterOK int
	for _, l := range clientLines(logs) {
		switch {
		case l.at.Before(killed):
		case l.at.Before(critical.Add(time.Second)):
			if l.status != 200 {
				during++
			}
		default:
			after++
			if l.status == 200 && l.instance == "restserver-1" {
				afterOK++
			}
		}
	}
	t.Logf("kill → passing set without it: %v; failed requests meanwhile: %d; after the move: %d of %d on restserver-1",
		critical.Sub(killed).Round(time.Millisecond), during, afterOK, after)
	if after < 10 || afterOK != after {
		t.Errorf("after the move %d of %d requests were served by restserver-1; want all", afterOK, after)
	}

	// Down leaves nothing behind.
	if _, err := c.run(ctx, "down", "-t", "5", "-v", "--remove-orphans"); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+c.project).Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("containers left after down: %s", out)
	}
	if out, _ := exec.Command("docker", "network", "ls", "-q", "--filter", "label=com.docker.compose.project="+c.project).Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("networks left after down: %s", out)
	}
	if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), "MESHLET") {
		t.Error("a MESHLET rule is in the machine's own namespace")
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
