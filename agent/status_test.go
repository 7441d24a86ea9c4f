package agent

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/status")

// TestStatusGolden renders canned /v1/state answers and compares them with
// the golden files; every line fits 80 columns.
func TestStatusGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/status/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no canned states: %v", err)
	}
	now := time.Date(2026, 11, 30, 12, 34, 56, 0, time.UTC)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var st state
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			renderStatus(&out, "127.0.0.1:15000", &st, now)
			golden := strings.TrimSuffix(f, ".json") + ".golden"
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != string(want) {
				t.Errorf("got\n%s\nwant\n%s", out.String(), want)
			}
			for i, line := range strings.Split(out.String(), "\n") {
				if n := utf8.RuneCountInString(line); n > statusWidth {
					t.Errorf("line %d is %d columns: %q", i+1, n, line)
				}
			}
		})
	}
}

// TestStatusCommand runs `meshlet status` against a fake admin server.
func TestStatusCommand(t *testing.T) {
	body, err := os.ReadFile("testdata/status/busy.json")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/state" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"status", "--admin-listen", addr}, func(string) string { return "" }, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"service web  vip 127.77.12.7  round-robin, sticky cookie CONTAINERID", "ejected 8s", "FAIL-STATIC"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	stderr.Reset()
	srv.Close()
	if code := Main([]string{"status", "--admin-listen", addr, "--timeout", "1s"}, func(string) string { return "" }, &stdout, &stderr); code != 1 {
		t.Errorf("against a stopped server: exit %d, want 1 (%s)", code, stderr.String())
	}
	if code := Main([]string{"status", "--admin-listen", "nowhere"}, func(string) string { return "" }, &stdout, &stderr); code != 2 {
		t.Errorf("bad --admin-listen: exit %d, want 2", code)
	}
}
