// Command meshlet is a sidecar that gives an unchanged containerised app
// service discovery, load balancing and stickiness through Consul. See the
// README for how to run it.
package main

import (
	"os"

	"github.com/meshlet/meshlet/agent"
)

func main() {
	os.Exit(agent.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
