package inject

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// Command runs `meshlet inject [flags] FILE` and returns the exit code: 0
// done (or, with --check, nothing to change), 1 with --check when the file
// would change, 2 on bad usage or a file it cannot mesh. validate may be
// nil (the sidecar's binary): then only YAML is checked.
func Command(args []string, stdin io.Reader, stdout, stderr io.Writer, validate Validator) int {
	fs := flag.NewFlagSet("meshlet inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: meshlet inject [flags] compose.yaml (- for stdin)\n\nWrites the compose file with a meshlet sidecar beside each service; the report goes to stderr.\n\n")
		fs.PrintDefaults()
	}
	out := fs.String("o", "", "write the meshed file here (default: stdout)")
	check := fs.Bool("check", false, "write nothing; report what would change and exit 1 if anything would")
	image := fs.String("image", DefaultImage, "image of the sidecars")
	consul := fs.String("consul", "", "HOST:PORT of an existing Consul agent for the sidecars (default: the file's Consul service, else an added dev server)")
	consulImage := fs.String("consul-image", DefaultConsulImage, "image of the Consul dev server inject adds")
	quiet := fs.Bool("q", false, "report only what could not be translated")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	name := fs.Arg(0)
	var src []byte
	var err error
	if name == "-" {
		src, err = io.ReadAll(stdin)
		name = "stdin"
	} else {
		src, err = os.ReadFile(name)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Inject(ctx, src, Options{Image: *image, Consul: *consul, ConsulImage: *consulImage, Filename: name, Validate: validate})
	if err != nil {
		fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
		return 2
	}
	for _, n := range res.Notes {
		if !*quiet || n.Untranslated {
			fmt.Fprintf(stderr, "meshlet inject: %s\n", n)
		}
	}
	if validate == nil && res.Changed {
		fmt.Fprintf(stderr, "meshlet inject: checked as YAML only; `docker compose config -q` (or meshlet-inject, built with compose-go) validates it fully\n")
	}
	if *check {
		if res.Changed {
			return 1
		}
		return 0
	}
	if *out == "" {
		if _, err := stdout.Write(res.Output); err != nil {
			fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
			return 1
		}
		return 0
	}
	if err := writeFile(*out, res.Output); err != nil {
		fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
		return 1
	}
	return 0
}

// writeFile replaces path through a temporary file, so that -o onto the
// input never leaves half a file.
func writeFile(path string, b []byte) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := path + ".meshlet-inject.tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
