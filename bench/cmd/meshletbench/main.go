// Command meshletbench is meshlet with Go's profiler on a side port, for the
// benchmark harness's profiling phase only: it is `meshlet` (the same
// agent.Main) plus, when MESHLET_BENCH_PPROF names an address, the
// net/http/pprof handlers there. The figures of the scenarios come from the
// real binary; this one gives the profiles and the goroutine counts.
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"

	"github.com/meshlet/meshlet/agent"
)

func main() {
	if addr := os.Getenv("MESHLET_BENCH_PPROF"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "meshletbench: MESHLET_BENCH_PPROF: %v\n", err)
			os.Exit(1)
		}
		go http.Serve(ln, nil)
	}
	os.Exit(agent.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
