package inject

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(plain, []byte("services:\n  web:\n    image: x\n    expose: [80]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Command(args, strings.NewReader(stdin), &out, &errb, nil)
		return code, out.String(), errb.String()
	}

	// --check: 1 while the file would change, and nothing written.
	if code, out, errs := run("", "--check", plain); code != 1 || out != "" || !strings.Contains(errs, "sidecar web-meshlet") {
		t.Errorf("--check on a plain file: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	// -o onto the input itself; its mode is kept.
	if code, out, errs := run("", "-o", plain, "--consul", "10.0.0.2:8500", plain); code != 0 || out != "" {
		t.Fatalf("-o: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	b, _ := os.ReadFile(plain)
	if !strings.Contains(string(b), "CONSUL_HTTP_ADDR: 10.0.0.2:8500") || strings.Contains(string(b), "hashicorp/consul") {
		t.Errorf("-o wrote:\n%s", b)
	}
	if fi, _ := os.Stat(plain); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 kept", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// Meshed now: --check passes, and stdin gives the same bytes back.
	if code, _, errs := run("", "--check", plain); code != 0 || !strings.Contains(errs, "nothing to change") {
		t.Errorf("--check on a meshed file: exit %d, stderr %q", code, errs)
	}
	if code, out, _ := run(string(b), "-"); code != 0 || out != string(b) {
		t.Errorf("stdin: exit %d, output differs:\n%s", code, out)
	}
	// Bad usage and bad files exit 2 with one line that says why.
	for _, args := range [][]string{{}, {"a", "b"}, {"--nope", plain}, {filepath.Join(dir, "missing.yaml")}} {
		if code, _, _ := run("", args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, errs := run("services: [\n", "-"); code != 2 || !strings.Contains(errs, "stdin: yaml: line") {
		t.Errorf("bad YAML: exit %d, stderr %q", code, errs)
	}
}

// The repository's own compose.yaml is meshed already, by hand: inject
// leaves it as it is.
func TestRepositoryComposeUnchanged(t *testing.T) {
	src, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Inject(context.Background(), src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed || !bytes.Equal(res.Output, src) {
		t.Errorf("compose.yaml would change: %v", res.Notes)
	}
}
