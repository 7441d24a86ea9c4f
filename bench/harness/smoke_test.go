package harness

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the harness on a real lab with tiny durations (S1 and its proxy-bound variant, S2,
// S3 and S4 in both layouts, S6 once each, about 15 s), so that the scripts do not rot;
// the figures come from `make bench`, never from here. It needs root and
// the tools of scripts/deps.sh: without them it is skipped, except under
// CI=true, where it fails.
func TestSmoke(t *testing.T) {
	if m := Missing(); len(m) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("missing %s: CI must run the benchmark smoke test (scripts/deps.sh installs the tools)", strings.Join(m, ", "))
		}
		t.Skipf("missing %s", strings.Join(m, ", "))
	}
	if testing.Short() {
		t.Skip("-short")
	}
	cfg := Smoke()
	cfg.Log = testLog{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Logf("report:\n%s", out.String())
	for _, want := range []string{
		`\| round-robin \| 16 \| meshlet \| [1-9][0-9]* \| [0-9.]+ \| [0-9.]+ \| ([0-9.]+|–) \| [0-9.]+ \| 0 \| [0-9.]+× \| [0-9.]+× \|`, // S1: CPU, syscalls (perf's if installed), switches
		`\| proxy-bound \| 16 \| meshlet \| [1-9][0-9]* \| [0-9.]+ \| [0-9.]+ \| ([0-9.]+|–) \| [0-9.]+ \| 0 \| [0-9.]+× \| [0-9.]+× \|`,
		`\| proxy-bound \| 16 \| nginx \| [1-9][0-9]* \|`,
		`\| round-robin \| 16 \| nginx \| [1-9][0-9]* \|`,
		`\| round-robin \| 16 \| haproxy \| [1-9][0-9]* \|`,
		`\| 1000 \| meshlet \| [1-9][0-9]* \| [0-9]+ \| [0-9]+ \|`,   // S2
		`\| shared core \| meshlet \| [0-9]+\.[0-9]+ \| [0-9.]+× \|`, // S3
		`\| proxy-bound \| meshlet \| [0-9]+\.[0-9]+ \| [0-9.]+× \|`,
		`\| meshlet: mesh names \(\*\.local\) \| [1-9][0-9]* \|`,                            // S4
		`\| meshlet → unbound: forwarded names, unbound on the load core \| [1-9][0-9]* \|`, // S4 fast
		`\| unbound directly \| [1-9][0-9]* \|`,
		`\| idle \| [1-9][0-9.]* / [0-9.]+ \|`, // S6
		`## Against the targets`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("report lacks a line matching %s", want)
		}
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
