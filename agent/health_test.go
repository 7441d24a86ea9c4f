package agent

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// adminStub stands for a sidecar's admin server that turns ready after
// readyAfter requests to /readyz.
func adminStub(t *testing.T, readyAfter int32) (addr string, hits *atomic.Int32) {
	hits = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if hits.Add(1) <= readyAfter {
			http.Error(w, "not ready: consul: connection refused", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), hits
}

func TestHealthCommand(t *testing.T) {
	ready, _ := adminStub(t, 0)
	notReady, _ := adminStub(t, 1000)
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		stdout   string
		stderrIn string
	}{
		{"ready", []string{"--admin-listen", ready}, nil, 0, "ready\n", ""},
		{"ready, address from the variable", nil, map[string]string{"MESHLET_ADMIN_LISTEN": ready}, 0, "ready\n", ""},
		{"not ready: the reason", []string{"--admin-listen", notReady}, nil, 1, "", "not ready: consul: connection refused"},
		{"no sidecar", []string{"--admin-listen", "127.0.0.1:1"}, nil, 1, "", "cannot reach the sidecar's admin server"},
		{"bad address", []string{"--admin-listen", "localhost"}, nil, 2, "", "--admin-listen"},
		{"bad timeout variable", nil, map[string]string{"MESHLET_HEALTH_TIMEOUT": "soon"}, 2, "", "MESHLET_HEALTH_TIMEOUT"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := Main(append([]string{"health"}, tt.args...), env(tt.env), &stdout, &stderr)
		if code != tt.code || stdout.String() != tt.stdout || !strings.Contains(stderr.String(), tt.stderrIn) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", tt.name, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderrIn)
		}
		if lines := strings.Count(stderr.String(), "\n"); lines > 1 {
			t.Errorf("%s: %d lines on stderr, want at most one", tt.name, lines)
		}
	}
}

func TestWaitCommand(t *testing.T) {
	addr, hits := adminStub(t, 3)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	if code := Main([]string{"wait", "--admin-listen", addr, "--timeout", "5s"}, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("wait: exit %d: %s", code, stderr.String())
	}
	if hits.Load() != 4 {
		t.Errorf("wait returned after %d polls, want the first ready one (4)", hits.Load())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("wait took %v", d)
	}

	never, _ := adminStub(t, 1<<30)
	stderr.Reset()
	start = time.Now()
	code := Main([]string{"wait", "--admin-listen", never, "--timeout", "300ms"}, env(nil), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "not ready after 300ms: not ready: consul") {
		t.Errorf("timeout: exit %d, stderr %q", code, stderr.String())
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("timeout of 300ms took %v", d)
	}
}
