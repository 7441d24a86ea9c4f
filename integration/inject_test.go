package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/inject"
	"github.com/meshlet/meshlet/inject/composecheck"
)

// composeTool finds docker compose (v2) or docker-compose (v1); nil when
// neither runs.
func composeTool() []string {
	for _, argv := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			continue
		}
		if exec.Command(argv[0], append(argv[1:], "version")...).Run() == nil {
			return argv
		}
	}
	return nil
}

func needCompose(t *testing.T, engine bool) []string {
	t.Helper()
	argv := composeTool()
	if argv == nil || (engine && exec.Command("docker", "info").Run() != nil) {
		if os.Getenv("CI") == "true" {
			t.Fatal("the Docker engine or its compose tool is missing; CI must run this test")
		}
		t.Skip("no Docker engine with compose here")
	}
	return argv
}

// The compose tool itself accepts every file meshlet inject wrote in its
// golden tests.
func TestInjectGoldenComposeConfig(t *testing.T) {
	argv := needCompose(t, false)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	goldens, err := filepath.Glob(filepath.Join(root, "inject", "testdata", "*.golden"))
	if err != nil || len(goldens) < 4 {
		t.Fatalf("golden files: %v %v", goldens, err)
	}
	for _, g := range goldens {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], "-p", "meshletgolden", "-f", g, "config", "-q")...)
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s config -q %s: %v\n%s", strings.Join(argv, " "), filepath.Base(g), err, out)
		}
	}
}

// The seed's acsrouting example, meshed by meshlet inject and run on the
// Docker engine with the images swapped for the local stand-ins: the client
// reaches both restserver instances by restserver.local, gets acsrouting's
// CONTAINERID cookie (the labels ask for session persistence) and stays on
// one instance while it keeps it; down leaves nothing behind.
func TestDockerInjectACSRouting(t *testing.T) {
	argv := needCompose(t, true)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// The images of docker_test.go (same Dockerfile targets and tags), from
	// the build cache when the sources did not change.
	start := time.Now()
	standins := exec.CommandContext(ctx, filepath.Join(root, "scripts", "docker-standins.sh"))
	standins.Stderr = os.Stderr
	out, err := standins.Output()
	if err != nil {
		t.Fatalf("making the stand-in base images: %v", err)
	}
	vars := map[string]string{}
	for _, kv := range strings.Fields(string(out)) {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	for target, tag := range map[string]string{"meshlet": "meshlet:dev", "simple-web": "meshlet-simple-web:dev", "restclient": "meshlet-restclient:dev"} {
		b := exec.CommandContext(ctx, "docker", "build", "-q", "--target", target, "-t", tag,
			"--build-arg", "GO_IMAGE="+vars["GO_IMAGE"], "--build-arg", "BASE_IMAGE="+vars["BASE_IMAGE"], root)
		if out, err := b.CombinedOutput(); err != nil {
			t.Fatalf("docker build --target %s: %v\n%s", target, err, tailLines(string(out), 20))
		}
	}
	t.Logf("images ready in %v", time.Since(start).Round(time.Second))

	// The seed's file, images swapped: the stand-in web image answers with
	// its container's hostname on the seed's port 80, the client image has
	// curl like the seed's centos.
	src, err := os.ReadFile(filepath.Join(root, "inject", "testdata", "acsrouting.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seed := strings.NewReplacer(
		"image: registry.aliyuncs.com/acs-sample/nginx:latest",
		"image: meshlet-simple-web:dev\n  entrypoint: [\"sh\", \"-c\", \"exec /usr/local/bin/simple-web -listen :80 -name $$HOSTNAME\"]",
		"image: registry.aliyuncs.com/acs-sample/centos:7",
		"image: meshlet-restclient:dev",
	).Replace(string(src))
	if strings.Contains(seed, "aliyuncs") {
		t.Fatalf("an image was not swapped:\n%s", seed)
	}
	dir := t.TempDir()
	in, meshed := filepath.Join(dir, "seed.yaml"), filepath.Join(dir, "docker-compose.yml")
	if err := os.WriteFile(in, []byte(seed), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := inject.Command([]string{"-o", meshed, "--image", "meshlet:dev", "--consul-image", vars["CONSUL_IMAGE"], in},
		nil, os.Stdout, &stderr, composecheck.Validate); code != 0 {
		t.Fatalf("meshlet inject exited %d:\n%s", code, stderr.String())
	}
	t.Logf("meshlet inject:\n%s", stderr.String())

	project := fmt.Sprintf("mlinject%d", os.Getpid())
	compose := func(ctx context.Context, args ...string) (string, error) {
		full := append(append([]string{}, argv[1:]...), append([]string{"-p", project, "-f", meshed}, args...)...)
		cmd := exec.CommandContext(ctx, argv[0], full...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s %s: %w\n%s", argv[0], strings.Join(full, " "), err, tailLines(string(out), 30))
		}
		return string(out), nil
	}
	container := func(service string) string {
		out, err := compose(ctx, "ps", "-q", service)
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("finding the container of %s: %v %s", service, err, out)
		}
		return strings.TrimSpace(strings.Split(strings.TrimSpace(out), "\n")[0])
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := compose(context.Background(), "logs", "--no-color", "--tail", "30")
			t.Logf("compose logs:\n%s", logs)
		}
		if _, err := compose(context.Background(), "down", "-t", "5", "-v", "--remove-orphans"); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})
	start = time.Now()
	if _, err := compose(ctx, "up", "-d"); err != nil {
		t.Fatal(err)
	}

	client := container("restclient")
	hostnames := map[string]string{} // container hostname → service
	for _, svc := range []string{"restserver-1", "restserver-2"} {
		out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.Config.Hostname}}", container(svc)).Output()
		if err != nil {
			t.Fatalf("inspecting %s: %v", svc, err)
		}
		hostnames[strings.TrimSpace(string(out))] = svc
	}
	// One request from the client, through its sidecar: the instance that
	// answered and the cookie it set ("" when none). cookies: a jar file.
	instanceRe := regexp.MustCompile(`(?mi)^x-instance: *(\S+)`)
	cookieRe := regexp.MustCompile(`(?mi)^set-cookie: *CONTAINERID=`)
	get := func(jar string) (instance string, cookie bool, err error) {
		args := []string{"exec", client, "curl", "-s", "--max-time", "3", "-o", "/dev/null", "-D", "-"}
		if jar != "" {
			args = append(args, "-c", jar, "-b", jar)
		}
		out, err := exec.CommandContext(ctx, "docker", append(args, "http://restserver.local/")...).Output()
		if err != nil {
			return "", false, err
		}
		m := instanceRe.FindStringSubmatch(string(out))
		if m == nil {
			return "", false, fmt.Errorf("no X-Instance in %q", out)
		}
		return m[1], cookieRe.Match(out), nil
	}

	// Both instances serve the plain client once their checks pass (the
	// seed's probe has a 10 s initial delay).
	seen := map[string]int{}
	cookies := 0
	deadline := time.Now().Add(3 * time.Minute)
	for len(seen) < 2 {
		inst, cookie, err := get("")
		if err == nil {
			seen[inst]++
			if cookie {
				cookies++
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reach both instances in 3 minutes: seen %v, last error %v", seen, err)
		}
		if len(seen) < 2 {
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Logf("both instances reached %v after up", time.Since(start).Round(time.Second))
	for inst := range seen {
		if _, ok := hostnames[inst]; !ok {
			t.Errorf("answered by %q, which is not a restserver instance %v", inst, hostnames)
		}
	}
	if cookies == 0 {
		t.Error("no answer set the CONTAINERID cookie that aliyun.routing.session_sticky asks for")
	}

	// A client that keeps the cookie stays on one instance.
	sticky := map[string]int{}
	for range 12 {
		inst, _, err := get("/tmp/cookies")
		if err != nil {
			t.Fatalf("sticky request: %v", err)
		}
		sticky[inst]++
	}
	if len(sticky) != 1 {
		t.Errorf("the cookie-keeping client was served by %v; want one instance", sticky)
	}

	// Down leaves nothing behind.
	if _, err := compose(ctx, "down", "-t", "5", "-v", "--remove-orphans"); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+project).Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("containers left after down: %s", out)
	}
	if out, _ := exec.Command("docker", "network", "ls", "-q", "--filter", "label=com.docker.compose.project="+project).Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("networks left after down: %s", out)
	}
	if out, _ := exec.Command("docker", "network", "ls", "-q", "--filter", "name="+project).Output(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("networks named after the project left after down: %s", out)
	}
	if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), "MESHLET") {
		t.Error("a MESHLET rule is in the machine's own namespace")
	}
}
