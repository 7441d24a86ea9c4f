package agent

import (
	"io"
	"os"

	"github.com/meshlet/meshlet/inject"
)

// injectCommand is `meshlet inject`. It validates YAML only: compose-go,
// which validates as docker compose reads a file, stays out of the
// sidecar's binary (it would add 2.8 MB and 4.5 MB of idle memory to every
// sidecar); cmd/meshlet-inject is the same command with it.
func injectCommand(args []string, stdout, stderr io.Writer) int {
	return inject.Command(args, os.Stdin, stdout, stderr, nil)
}
