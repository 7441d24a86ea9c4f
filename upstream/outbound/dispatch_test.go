package outbound

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// The forwarder's hand-offs to the net/http path and the drain of its
// connections, which only the dispatcher wires.

func TestForwarderHandsUpgradeToNetHTTPAfterServing(t *testing.T) {
	inst := echoUpgradeInstance(t, func(w http.ResponseWriter) { io.WriteString(w, "plain") })
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, upstreamtest.AddrOf(inst)))
	// A plain request first (the forwarder's), then the upgrade pipelined
	// right behind another one, in one write.
	app.Send("GET /1 HTTP/1.1\r\nHost: web.local\r\n\r\n")
	if _, body := app.Read("GET"); body != "plain" {
		t.Fatalf("first answer %q", body)
	}
	app.Send("GET /2 HTTP/1.1\r\nHost: web.local\r\n\r\nGET /ws HTTP/1.1\r\nHost: web.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	if _, body := app.Read("GET"); body != "plain" {
		t.Fatalf("second answer %q", body)
	}
	resp, err := http.ReadResponse(app.BR, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v, want 101", resp, err)
	}
	io.WriteString(app.C, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(app.BR, got); err != nil || string(got) != "ping" {
		t.Errorf("echo = %q, %v", got, err)
	}
}

func TestForwarderExpectContinueGoesThroughNetHTTP(t *testing.T) {
	front := oneInstanceMesh(t, upstreamtest.AddrOf(upstreamtest.BodyEcho(t, "a")))
	app := upstreamtest.DialApp(t, front)
	app.Send("PUT /x HTTP/1.1\r\nHost: web.local\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(app.BR, nil)
	if err != nil || resp.StatusCode != 100 {
		t.Fatalf("want 100 Continue first, got %v %v", resp, err)
	}
	app.Send("hello")
	if resp, body := app.Read("PUT"); resp.StatusCode != 200 || body != "hello" {
		t.Errorf("got %d %q, want 200 hello", resp.StatusCode, body)
	}
}

func TestForwarderShutdownClosesIdleAndEndsInFlightWithClose(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	}))
	t.Cleanup(inst.Close)
	_, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(inst)))
	idle := upstreamtest.DialApp(t, front)
	idle.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
	idle.Read("GET")
	busy := upstreamtest.DialApp(t, front)
	busy.Send("GET /slow HTTP/1.1\r\nHost: web.local\r\n\r\n")
	<-arrived

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- m.Shutdown(ctx)
	}()
	if !idle.Closed() {
		t.Error("an idle keep-alive connection stayed open after Shutdown began")
	}
	close(release)
	resp, body := busy.Read("GET")
	if body != "done" || !resp.Close {
		t.Errorf("in-flight answer %q close %t, want done with Connection: close", body, resp.Close)
	}
	if err := <-shutdown; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestConfigSniffTimeout(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := upstream.New(upstream.Config{Consul: client})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(m, Config{SniffTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "SniffTimeout") {
		t.Errorf("New with a negative SniffTimeout = %v, want an error naming it", err)
	}
	d, err := New(m, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.SniffTimeout != 300*time.Millisecond {
		t.Errorf("default SniffTimeout = %v, want 300ms", d.cfg.SniffTimeout)
	}
}
