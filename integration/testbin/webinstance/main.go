// Command webinstance is the tiny web service that stands for an instance of
// a mesh service in tests, the demo and benchmarks (like the seeds'
// simple-web image): it answers with its own name.
//
//	GET  /            "NAME\n"; headers X-Instance, X-Seen-Host, X-Seen-Forwarded-For, -Host, -Proto
//	GET  /health      200, or 503 after POST /admin/health?state=fail
//	POST /admin/health?state=ok|fail
//	GET  /admin/count the number of requests to / so far
//	GET  /bytes?n=N   N bytes of payload (N ≤ 64 MiB)
//	POST /echo        the request body back
//	GET  /slow?ms=N   answers after N ms (N ≤ 60000)
//	POST /admin/delay?ms=N  makes every later GET / answer N ms late (N ≤ 60000; 0: at once)
//	GET  /payload     a fixed body of -payload-size bytes (default 1 KiB), built
//	                  once, with X-Instance: the benchmarks' request
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	name := flag.String("name", "web", "instance name to answer with")
	payloadSize := flag.Int("payload-size", 1024, "bytes of the body of GET /payload")
	flag.Parse()
	if *payloadSize < 0 || *payloadSize > 64<<20 {
		log.Fatalf("-payload-size %d: want 0..67108864", *payloadSize)
	}

	var healthy atomic.Bool
	healthy.Store(true)
	var count atomic.Int64
	var delay atomic.Int64 // ms added to every answer of /
	body := []byte(*name + "\n")

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		if d := delay.Load(); d > 0 {
			select {
			case <-time.After(time.Duration(d) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		h := w.Header()
		h.Set("X-Instance", *name)
		h.Set("X-Seen-Host", r.Host)
		h.Set("X-Seen-Forwarded-For", r.Header.Get("X-Forwarded-For"))
		h.Set("X-Seen-Forwarded-Host", r.Header.Get("X-Forwarded-Host"))
		h.Set("X-Seen-Forwarded-Proto", r.Header.Get("X-Forwarded-Proto"))
		h.Set("Content-Type", "text/plain")
		w.Write(body)
	})
	// GET /status/CODE answers with that status, for tests that count
	// answers by status class.
	mux.HandleFunc("GET /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "want /status/200..599", http.StatusBadRequest)
			return
		}
		count.Add(1)
		w.Header().Set("X-Instance", *name)
		w.WriteHeader(code)
		io.WriteString(w, *name+"\n")
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "unhealthy", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /admin/health", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("state") {
		case "ok":
			healthy.Store(true)
		case "fail":
			healthy.Store(false)
		default:
			http.Error(w, "state must be ok or fail", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "done\n")
	})
	mux.HandleFunc("POST /admin/delay", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 60000 {
			http.Error(w, "ms must be 0..60000", http.StatusBadRequest)
			return
		}
		delay.Store(int64(ms))
		io.WriteString(w, "done\n")
	})
	mux.HandleFunc("/admin/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", count.Load())
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "n must be 0..67108864", http.StatusBadRequest)
			return
		}
		count.Add(1)
		w.Header().Set("X-Instance", *name)
		w.Header().Set("Content-Length", strconv.Itoa(n))
		chunk := make([]byte, 32<<10)
		for i := range chunk {
			chunk[i] = 'a' + byte(i%26)
		}
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	payload := make([]byte, *payloadSize)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	payloadLen := strconv.Itoa(len(payload))
	mux.HandleFunc("GET /payload", func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		h := w.Header()
		h["X-Instance"] = []string{*name}
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{payloadLen}
		w.Write(payload)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		w.Header().Set("X-Instance", *name)
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 60000 {
			http.Error(w, "ms must be 0..60000", http.StatusBadRequest)
			return
		}
		count.Add(1)
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Instance", *name)
		w.Write(body)
	})

	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("webinstance %s listening on %s", *name, *listen)
	log.Fatal(srv.ListenAndServe())
}
