package outbound

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const modPath = "github.com/meshlet/meshlet/upstream"

// frontEnds are the protocol front-ends: each asks the routing core only.
var frontEnds = []string{"h1", "h2", "httpfallback", "tcp"}

// deps lists what pkg imports, directly or not, as go list -deps does.
func deps(t *testing.T, pkg string) []string {
	return goList(t, "-deps", pkg)
}

// imports lists what pkg imports directly.
func imports(t *testing.T, pkg string) []string {
	return goList(t, "-f", `{{join .Imports "\n"}}`, pkg)
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goCmd, append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

// TestLayout keeps the split of upstream true: the core imports no
// front-end (nor this dispatcher), no front-end imports another, and the
// core itself imports none of the packages that read or write a wire
// protocol (it uses net/http for status and method names only).
func TestLayout(t *testing.T) {
	upper := []string{modPath + "/outbound"}
	for _, f := range frontEnds {
		upper = append(upper, modPath+"/"+f)
	}
	core := deps(t, modPath)
	for _, bad := range upper {
		if slices.Contains(core, bad) {
			t.Errorf("the routing core %s depends on %s", modPath, bad)
		}
	}
	for _, bad := range []string{"bufio", "net/http/httputil", "net/textproto"} {
		if slices.Contains(imports(t, modPath), bad) {
			t.Errorf("the routing core %s imports %s", modPath, bad)
		}
	}
	for _, f := range frontEnds {
		pkg := modPath + "/" + f
		d := deps(t, pkg)
		if !slices.Contains(d, modPath) {
			t.Errorf("%s does not route through the core", pkg)
		}
		for _, other := range upper {
			if other != pkg && slices.Contains(d, other) {
				t.Errorf("front-end %s depends on %s", pkg, other)
			}
		}
	}
}
