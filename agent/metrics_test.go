package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshlet/meshlet/dns"
)

func TestAccessLogSetting(t *testing.T) {
	cfg, err := ParseConfig([]string{"--access-log", "stdout"}, func(string) string { return "" }, nil)
	if err != nil || cfg.AccessLog != "stdout" {
		t.Fatalf("--access-log stdout: %q, %v", cfg.AccessLog, err)
	}
	cfg, err = ParseConfig(nil, func(k string) string {
		if k == "MESHLET_ACCESS_LOG" {
			return "/var/log/x.json"
		}
		return ""
	}, nil)
	if err != nil || cfg.AccessLog != "/var/log/x.json" {
		t.Fatalf("MESHLET_ACCESS_LOG: %q, %v", cfg.AccessLog, err)
	}
	if cfg, _ := ParseConfig(nil, func(string) string { return "" }, nil); cfg.AccessLog != "" {
		t.Fatalf("default %q, want none", cfg.AccessLog)
	}
}

func TestOpenAccessLog(t *testing.T) {
	if l, closeLog, err := openAccessLog(""); l != nil || err != nil {
		t.Fatalf("none: %v %v", l, err)
	} else {
		closeLog()
	}
	path := filepath.Join(t.TempDir(), "access.json")
	l, closeLog, err := openAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("request", "service", "web")
	closeLog()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal(b, &line); err != nil || line["service"] != "web" {
		t.Fatalf("line %q: %v", b, err)
	}
	if _, _, err := openAccessLog(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Fatal("a file in a missing directory opened")
	}
}

// The DNS server's kinds map onto the metrics' kinds one to one.
func TestDNSKindsMap(t *testing.T) {
	want := map[dns.QueryKind]string{dns.QueryMesh: "mesh", dns.QueryNXDomain: "nxdomain", dns.QueryForwarded: "forwarded", dns.QueryServFail: "servfail"}
	for k, name := range want {
		if got := dnsKinds[k].String(); got != name {
			t.Errorf("dns kind %d counts as %q, want %q", k, got, name)
		}
	}
	if len(dnsKinds) != len(want) {
		t.Errorf("%d kinds mapped, want %d", len(dnsKinds), len(want))
	}
}
