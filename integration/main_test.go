// Package integration holds meshlet's end-to-end tests: real kernels (network
// namespaces, iptables), a real Consul agent and real processes. They need
// root; under CI=true a missing prerequisite fails the run instead of
// skipping it.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/integration/netlab"
)

// bins are built once by TestMain.
var bins meshlab.Binaries

func TestMain(m *testing.M) {
	if msg := missingPrerequisite(); msg != "" {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "integration: %s (CI must run these tests)\n", msg)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "integration: skipping: %s\n", msg)
		os.Exit(0)
	}
	netlab.Sweep() // namespaces of an earlier run that was killed
	dir, err := os.MkdirTemp("", "meshlet-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bins, err = meshlab.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func missingPrerequisite() string {
	if os.Geteuid() != 0 {
		return "not root (the tests make network namespaces and iptables rules)"
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "curl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (make deps installs it)"
		}
	}
	return ""
}

// startWorld builds the standard topology for one test and removes it when
// the test ends, whatever happened.
func startWorld(t *testing.T, opts meshlab.Options) *meshlab.World {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	w, err := meshlab.Start(ctx, bins, opts)
	if err != nil {
		t.Fatalf("starting the lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() && w.Meshlet != nil {
			t.Logf("meshlet log:\n%s", w.Meshlet.Output())
		}
		if err := w.Close(); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
	})
	return w
}
