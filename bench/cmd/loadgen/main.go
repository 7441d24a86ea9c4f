// Command loadgen is the benchmark harness's load client, run by the harness
// inside a lab namespace and pinned to the load generator's core:
//
//	loadgen http -url URL -rate R -conns C -duration D   constant-rate HTTP/1.1, JSON result
//	loadgen bulk -addr HOST:PORT -bytes N                one bulk TCP transfer, JSON result
//	loadgen bulk-serve -listen :9000 -for D              the bulk server, for at most D
//
// Every mode stops by itself: http after duration plus one request
// timeout, bulk after its timeout, bulk-serve after -for.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/meshlet/meshlet/bench/loadgen"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen http|bulk|bulk-serve [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "http":
		err = httpCmd(os.Args[2:])
	case "bulk":
		err = bulkCmd(os.Args[2:])
	case "bulk-serve":
		err = bulkServeCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want http, bulk or bulk-serve)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
}

func httpCmd(args []string) error {
	fs := flag.NewFlagSet("loadgen http", flag.ExitOnError)
	var cfg loadgen.HTTPConfig
	fs.StringVar(&cfg.URL, "url", "", "http:// URL to GET")
	fs.StringVar(&cfg.Host, "host", "", "Host header (default: the URL's host)")
	fs.Float64Var(&cfg.Rate, "rate", 1000, "requests per second over all connections")
	fs.IntVar(&cfg.Conns, "conns", 16, "keep-alive connections")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long requests are started (at most 10m)")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Second, "per-request timeout")
	fs.StringVar(&cfg.CountHeader, "count-header", "", "count answers by this header's value")
	fs.Parse(args)
	if cfg.Duration > 10*time.Minute {
		return fmt.Errorf("-duration %v: at most 10m", cfg.Duration)
	}
	res, err := loadgen.RunHTTP(context.Background(), cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func bulkCmd(args []string) error {
	fs := flag.NewFlagSet("loadgen bulk", flag.ExitOnError)
	addr := fs.String("addr", "", "HOST:PORT of a bulk server (a name is resolved)")
	n := fs.Int64("bytes", 1<<30, "bytes to transfer")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	fs.Parse(args)
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", *addr, err)
	}
	if net.ParseIP(host) == nil {
		ips, err := net.DefaultResolver.LookupIP(context.Background(), "ip4", host)
		if err != nil || len(ips) == 0 {
			return fmt.Errorf("resolving %s: %v", host, err)
		}
		host = ips[0].String()
	}
	res, err := loadgen.RunBulk(context.Background(), net.JoinHostPort(host, port), *n, *timeout)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func bulkServeCmd(args []string) error {
	fs := flag.NewFlagSet("loadgen bulk-serve", flag.ExitOnError)
	listen := fs.String("listen", ":9000", "address to serve on")
	life := fs.Duration("for", time.Hour, "stop after this long")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *life)
	defer cancel()
	return loadgen.ServeBulk(ctx, ln, 30*time.Second)
}
