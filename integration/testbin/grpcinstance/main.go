// Command grpcinstance is the instance of the HTTP/2 and gRPC integration
// tests and benchmarks. It serves, each on a port of its own:
//
//	-grpc    gRPC's interop TestService over h2c (upstream/h2/h2test),
//	         answering with -name; SIGTERM stops it with GracefulStop
//	-http    GET /health; GET /ws a WebSocket that sends NAME, then echoes; GET / "NAME\n" with
//	         X-Instance, over HTTP/1.1 and h2c
//	-banner  a server-first TCP service: "220 NAME\r\n" at once, then an echo
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"

	"github.com/meshlet/meshlet/upstream/h2/h2test"
)

func main() {
	grpcAddr := flag.String("grpc", ":9090", "address of the gRPC service")
	httpAddr := flag.String("http", ":8080", "address of the HTTP service")
	bannerAddr := flag.String("banner", "", "address of the server-first TCP service (none if empty)")
	name := flag.String("name", "grpc", "instance name to answer with")
	flag.Parse()

	gs := grpc.NewServer()
	h2test.Register(gs, *name)
	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := gs.Serve(gl); err != nil {
			log.Fatal(err)
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		if websocket.Message.Send(c, *name) == nil {
			io.Copy(c, c)
		}
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", *name)
		fmt.Fprintf(w, "%s\n", *name)
	})
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Addr: *httpAddr, Handler: mux, Protocols: protocols}
	go func() { log.Fatal(hs.ListenAndServe()) }()

	if *bannerAddr != "" {
		bl, err := net.Listen("tcp", *bannerAddr)
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			for {
				c, err := bl.Accept()
				if err != nil {
					log.Fatal(err)
				}
				go func() {
					defer c.Close()
					fmt.Fprintf(c, "220 %s\r\n", *name)
					io.Copy(c, c)
				}()
			}
		}()
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	log.Printf("%s: stopping gracefully", *name)
	gs.GracefulStop()
	log.Printf("%s: stopped", *name)
}
