package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// `make demo` (README, first line) shows web.local spread over three
// instances, web-2 leaving when its check fails and coming back, and on
// Ctrl-C removes everything it made. This runs the same program with
// shorter rounds and checks what a user would read on the terminal.
func TestDemoShowsBalancingAndCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := meshlab.RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./integration/demo")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the demo: %v\n%s", err, out)
	}

	cmd := exec.CommandContext(ctx, bin, "-every", "700ms", "-requests", "9", "-duration", "2m")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "MESHLET_CONSUL_BIN="+bins.Consul)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		netlab.Sweep()
	})

	// Read the terminal until round 16, then press Ctrl-C.
	var lines []string
	rounds := map[int]string{}
	roundLine := regexp.MustCompile(`^round +(\d+): (.*)$`)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if m := roundLine.FindStringSubmatch(line); m != nil {
			var n int
			fmt.Sscan(m[1], &n)
			rounds[n] = m[2]
			if n == 16 {
				cmd.Process.Signal(syscall.SIGINT)
				break
			}
		}
	}
	rest, _ := io.ReadAll(stdout)
	lines = append(lines, strings.Split(strings.TrimSpace(string(rest)), "\n")...)
	waitErr := cmd.Wait()
	out := strings.Join(lines, "\n")
	if waitErr != nil {
		t.Fatalf("demo: %v; it printed:\n%s", waitErr, out)
	}
	t.Logf("the demo printed:\n%s", out)

	if !regexp.MustCompile(`getent ahostsv4 web\.local → 127\.77\.\d+\.\d+`).MatchString(out) {
		t.Errorf("no VIP from getent in the output")
	}
	// Rounds 1-3: every instance answers, nothing fails.
	for r := 1; r <= 3; r++ {
		for _, inst := range []string{"web-1", "web-2", "web-3"} {
			if !strings.Contains(rounds[r], inst) {
				t.Errorf("round %d (%q) has no %s: not spread over the three", r, rounds[r], inst)
			}
		}
	}
	// web-2 fails from round 4; Consul's check needs a few probe intervals,
	// so by round 7 it must be gone. Back from round 8: it must be seen again
	// by round 16.
	if strings.Contains(rounds[7], "web-2") {
		t.Errorf("round 7 (%q) still reaches web-2, three rounds after its probe failed", rounds[7])
	}
	back := false
	for r := 9; r <= 16; r++ {
		back = back || strings.Contains(rounds[r], "web-2")
	}
	if !back {
		t.Errorf("web-2 never came back in rounds 9-16")
	}
	for r, s := range rounds {
		if strings.Contains(s, "failed") {
			t.Errorf("round %d: %q: a request failed", r, s)
		}
	}
	if !strings.Contains(out, "cleaning up") {
		t.Errorf("no cleanup message after Ctrl-C")
	}
	// Nothing of the demo's lab is left: its namespaces carry its pid.
	ns, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("%s%d-", netlab.Prefix, cmd.Process.Pid)
	for _, l := range strings.Split(string(ns), "\n") {
		if strings.HasPrefix(l, prefix) {
			t.Errorf("namespace left behind after the demo exited: %s", l)
		}
	}
}
