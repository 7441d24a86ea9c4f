// Command mtlsinbound runs meshlet's certs and inbound packages alone, in
// front of an app, for the integration tests: mTLS is not wired into
// `meshlet run` yet. It is not a product.
//
//	mtlsinbound -consul 10.77.0.2:8500 -service web -listen 10.77.0.9:21000 -app 127.0.0.1:8080
//
// It logs to stderr (slog text, debug), serves the certs snapshot as JSON
// on http://ADMIN/v1/state, and stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/inbound"
)

func main() {
	consul := flag.String("consul", "127.0.0.1:8500", "Consul's HTTP address")
	service := flag.String("service", "", "the app's service name")
	listen := flag.String("listen", fmt.Sprintf(":%d", inbound.DefaultPort), "inbound listen address")
	app := flag.String("app", "127.0.0.1:8080", "the app's local address")
	admin := flag.String("admin", "127.0.0.1:15000", "address of /v1/state")
	ttl := flag.Duration("decision-ttl", inbound.DefaultDecisionTTL, "longest a cached intention decision decides a new connection")
	recheck := flag.Duration("recheck", inbound.DefaultRecheck, "how often open connections are authorized again")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := run(*consul, *service, *listen, *app, *admin, *ttl, *recheck, log); err != nil {
		log.Error("mtlsinbound", "err", err)
		os.Exit(1)
	}
}

func run(consul, service, listen, app, admin string, ttl, recheck time.Duration, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Blocking queries get their deadlines from their contexts; the
	// authorize call has none, so its client has a timeout.
	watchCfg := api.DefaultNonPooledConfig()
	watchCfg.Address = consul
	watchClient, err := api.NewClient(watchCfg)
	if err != nil {
		return err
	}
	authCfg := api.DefaultConfig()
	authCfg.Address = consul
	authCfg.HttpClient = &http.Client{Timeout: 5 * time.Second}
	authClient, err := api.NewClient(authCfg)
	if err != nil {
		return err
	}

	m, err := certs.New(certs.Config{Consul: watchClient.Agent(), Service: service, Log: log})
	if err != nil {
		return err
	}
	go m.Run(ctx)

	mux := http.NewServeMux()
	mux.HandleFunc("/v1/state", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(m.Snapshot())
	})
	adminLn, err := net.Listen("tcp", admin)
	if err != nil {
		return err
	}
	go http.Serve(adminLn, mux)

	select {
	case <-m.Ready():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no roots and leaf from consul in 30s: %+v", m.Snapshot())
	case <-ctx.Done():
		return nil
	}
	l, err := inbound.New(inbound.Config{Listen: listen, App: app, Service: service, TLS: m, Consul: authClient.Agent(),
		DecisionTTL: ttl, Recheck: recheck, Log: log})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- l.Serve(ctx) }()
	select {
	case <-l.Bound():
	case err := <-errc:
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.Shutdown(sctx)
	return <-errc
}
