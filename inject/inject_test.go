package inject_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/inject"
	"github.com/meshlet/meshlet/inject/composecheck"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

// Each testdata/NAME.yaml is meshed with compose-go's validation; the output
// must equal NAME.golden and the report NAME.report, or the error NAME.err.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		base := strings.TrimSuffix(in, ".yaml")
		t.Run(filepath.Base(base), func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			res, err := inject.Inject(context.Background(), src, inject.Options{
				Filename: filepath.Base(in), Validate: composecheck.Validate,
			})
			if err != nil {
				golden(t, base+".err", []byte(err.Error()+"\n"))
				if _, serr := os.Stat(base + ".golden"); serr == nil {
					t.Errorf("%s.golden exists, but meshing failed", base)
				}
				return
			}
			if _, serr := os.Stat(base + ".err"); serr == nil {
				t.Errorf("%s.err exists, but meshing succeeded", base)
			}
			golden(t, base+".golden", res.Output)
			var report strings.Builder
			for _, n := range res.Notes {
				report.WriteString(n.String() + "\n")
			}
			golden(t, base+".report", []byte(report.String()))
			if strings.Contains(base, "injected") && res.Changed {
				t.Error("an injected file changed")
			}

			// Injecting the output again changes nothing.
			again, err := inject.Inject(context.Background(), res.Output, inject.Options{
				Filename: "golden", Validate: composecheck.Validate,
			})
			if err != nil {
				t.Fatalf("injecting the output again: %v", err)
			}
			if again.Changed || string(again.Output) != string(res.Output) {
				t.Errorf("injecting the output again changed it: %v", again.Notes)
			}
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
