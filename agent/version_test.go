package agent

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionString(t *testing.T) {
	info := func(mainVersion string, settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: mainVersion}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	for _, tc := range []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"stamped release", "1.2.0", info("(devel)", "vcs.revision", "3680d3e0123456789"), "1.2.0 (go1.26.8)"},
		{"clean tree", "dev", info("(devel)", "vcs.revision", "3680d3e0123456789", "vcs.modified", "false"), "dev-3680d3e01234 (go1.26.8)"},
		{"dirty tree", "dev", info("(devel)", "vcs.revision", "3680d3e0123456789", "vcs.modified", "true"), "dev-3680d3e01234+dirty (go1.26.8)"},
		{"go install at a version", "dev", info("v0.3.1"), "v0.3.1 (go1.26.8)"},
		{"nothing recorded", "dev", info("(devel)"), "dev (go1.26.8)"},
		{"no build info", "dev", nil, "dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionString(tc.stamped, tc.bi); got != tc.want {
				t.Errorf("versionString = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "--version", "-v"} {
		var out, errOut bytes.Buffer
		if code := Main([]string{arg}, func(string) string { return "" }, &out, &errOut); code != 0 {
			t.Fatalf("meshlet %s: exit %d, stderr %q", arg, code, errOut.String())
		}
		if !strings.HasPrefix(out.String(), "meshlet ") || !strings.Contains(out.String(), "go1.") {
			t.Errorf("meshlet %s printed %q; want \"meshlet VERSION (goX.Y)\"", arg, out.String())
		}
	}
}
