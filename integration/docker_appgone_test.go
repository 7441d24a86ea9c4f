package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A batch app and its sidecar, as a user writes them: the app waits for
// its sidecar with `meshlet wait`, works a little and exits; the sidecar
// (network_mode: service:batch) is left in a namespace without the app's
// interface. No restart policy, so what the test sees is meshlet's own
// exit.
const batchCompose = `services:
  consul:
    image: ${CONSUL_IMAGE}
    command: ["agent", "-dev", "-client", "0.0.0.0", "-log-level", "warn"]
  batch:
    image: meshlet:dev
    entrypoint: ["sh", "-c", "meshlet wait --timeout 60s && echo batch working && sleep 2 && echo batch done"]
    depends_on: [consul]
  batch-sidecar:
    image: meshlet:dev
    network_mode: service:batch
    cap_add: [NET_ADMIN]
    depends_on: [consul, batch]
    environment:
      CONSUL_HTTP_ADDR: consul:8500
`

// containerState is what docker inspect tells of a container's end.
type containerState struct {
	status   string
	exitCode int
	finished time.Time
}

func inspectState(ctx context.Context, id string) (containerState, error) {
	out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.FinishedAt}}", id).Output()
	if err != nil {
		return containerState{}, fmt.Errorf("inspecting %s: %w", id, err)
	}
	var st containerState
	var finished string
	if _, err := fmt.Sscan(string(out), &st.status, &st.exitCode, &finished); err != nil {
		return containerState{}, fmt.Errorf("inspecting %s: %q: %w", id, out, err)
	}
	st.finished, _ = time.Parse(time.RFC3339Nano, finished)
	return st, nil
}

// When a batch app's container exits, its sidecar ends too, with status 0,
// so that the compose project ends.
func TestDockerSidecarEndsWithItsApp(t *testing.T) {
	c := newCompose(t, fmt.Sprintf("mltgone%d", os.Getpid()))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c.env = standins(t, ctx, c.root)
	c.file = filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(c.file, []byte(batchCompose), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := c.run(context.Background(), "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", logs)
		}
		if _, err := c.run(context.Background(), "down", "-t", "5", "-v", "--remove-orphans"); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})

	// The sidecar image, built as compose.yaml builds it (the same
	// Dockerfile target and arguments, so Docker's cache serves both tests).
	start := time.Now()
	build := append([]string{"build", "-q", "--target", "meshlet", "-t", "meshlet:dev"}, buildArgs(c.env)...)
	if out, err := exec.CommandContext(ctx, "docker", append(build, c.root)...).CombinedOutput(); err != nil {
		t.Fatalf("building meshlet:dev: %v\n%s", err, tailLines(string(out), 30))
	}
	t.Logf("meshlet:dev built in %v", time.Since(start).Round(time.Second))

	if _, err := c.run(ctx, "up", "-d"); err != nil {
		t.Fatal(err)
	}
	app, sidecar := c.container(ctx, "batch"), c.container(ctx, "batch-sidecar")

	// The app runs until its sidecar is ready (at most a minute) and
	// two seconds more; the sidecar must end a few seconds after it.
	var appEnd, sidecarEnd containerState
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var err error
		if appEnd, err = inspectState(ctx, app); err != nil {
			t.Fatal(err)
		}
		if sidecarEnd, err = inspectState(ctx, sidecar); err != nil {
			t.Fatal(err)
		}
		if sidecarEnd.status == "exited" {
			break
		}
		if appEnd.status == "exited" && time.Since(appEnd.finished) > 20*time.Second {
			t.Fatalf("the sidecar is %s %v after its app exited", sidecarEnd.status, time.Since(appEnd.finished).Round(time.Second))
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 minutes: app %s, sidecar %s", appEnd.status, sidecarEnd.status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs, _ := c.run(ctx, "logs", "--no-color", "batch", "batch-sidecar")
	if appEnd.status != "exited" || appEnd.exitCode != 0 || !strings.Contains(logs, "batch done") {
		t.Fatalf("the sidecar ended before its app had done its work: app %+v", appEnd)
	}
	after := sidecarEnd.finished.Sub(appEnd.finished)
	t.Logf("the sidecar exited with status %d, %v after its app", sidecarEnd.exitCode, after.Round(time.Millisecond))
	if sidecarEnd.exitCode != 0 {
		t.Errorf("the sidecar exited with status %d; want 0", sidecarEnd.exitCode)
	}
	if after > 10*time.Second {
		t.Errorf("the sidecar exited %v after its app; want a few seconds", after.Round(time.Millisecond))
	}
	if !strings.Contains(logs, "the app is gone") {
		t.Errorf("no line in the sidecar's log saying why it ended:\n%s", tailLines(logs, 20))
	}
}

// buildArgs turns the stand-ins' variables into docker build arguments.
func buildArgs(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "GO_IMAGE=") || strings.HasPrefix(kv, "BASE_IMAGE=") {
			out = append(out, "--build-arg", kv)
		}
	}
	return out
}
