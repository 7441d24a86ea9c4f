package intercept

import (
	"strings"
	"testing"
)

func TestNewIPTablesWithoutCommand(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := NewIPTables()
	if err == nil || !strings.Contains(err.Error(), "is the iptables command installed") {
		t.Fatalf("NewIPTables with no iptables in PATH = %v, want a clear error", err)
	}
}

func TestNewManagerNilIPTables(t *testing.T) {
	if _, err := NewManager(testConfig(), nil); err == nil {
		t.Fatal("NewManager(cfg, nil) = nil error")
	}
}
