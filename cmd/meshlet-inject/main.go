// Command meshlet-inject is `meshlet inject` with compose-go's validation:
// the input and the output are checked exactly as docker compose reads
// them, and an invalid input gets compose-go's error with its line. It is a
// binary of its own so that the sidecar's stays small (see the README).
//
//	go install github.com/meshlet/meshlet/cmd/meshlet-inject@latest
//	meshlet-inject [-o OUT] [--check] [--image IMG] [--consul ADDR] compose.yaml
package main

import (
	"os"

	"github.com/sirupsen/logrus"

	"github.com/meshlet/meshlet/inject"
	"github.com/meshlet/meshlet/inject/composecheck"
)

func main() {
	// compose-go warns through logrus about what inject reports itself
	// (an obsolete version: key, which the output drops).
	logrus.SetLevel(logrus.ErrorLevel)
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "inject" { // also answers as `meshlet-inject inject`, like `meshlet inject`
		args = args[1:]
	}
	os.Exit(inject.Command(args, os.Stdin, os.Stdout, os.Stderr, composecheck.Validate))
}
