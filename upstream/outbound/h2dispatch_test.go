package outbound

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// A connection that begins with the HTTP/2 preface goes to the HTTP/2
// front-end, which routes each of its requests on its own.
func TestDispatchH2cPerRequest(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Protocols: protocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", front.Addr)
		},
	}}
	seen := map[string]int{}
	for range 6 {
		resp, err := client.Get("http://web.local/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %d", resp.Proto, resp.StatusCode)
		}
		seen[resp.Header.Get("X-Instance")]++
	}
	if seen["a"] != 3 || seen["b"] != 3 || front.Accepted.Load() != 1 {
		t.Errorf("6 requests over %d connection(s) went %v, want 3 and 3 over one", front.Accepted.Load(), seen)
	}
}

// A service declared meshlet-protocol=tcp is proxied without sniffing: a
// server-first protocol greets at once, however long the sniff timeout,
// and even the HTTP/2 preface passes as bytes.
func TestDispatchProtocolTCPSkipsSniffing(t *testing.T) {
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		io.WriteString(c, "220 greetings\r\n")
		upstreamtest.Echo(c)
	})
	_, _, front := webMeshSniff(t, 5*time.Second, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "smtp", addr), "meshlet-protocol", "tcp"))
	for i := range 2 { // the first connection waits for Consul's first answer, not for the sniff
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		greeting := make([]byte, len("220 greetings\r\n"))
		if _, err := io.ReadFull(conn, greeting); err != nil || string(greeting) != "220 greetings\r\n" {
			t.Fatalf("connection %d: greeting %q, %v (after %v)", i, greeting, err, time.Since(start))
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("connection %d: the greeting came after %v", i, d)
		}
		preface := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		conn.Write(preface)
		conn.(*net.TCPConn).CloseWrite()
		echo, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || !bytes.Equal(echo, preface) {
			t.Errorf("connection %d: echo %q, %v", i, echo, err)
		}
	}
}

// HTTP/1.1 requests to a service declared http2 reach its h2c-only
// instances as HTTP/2.
func TestDispatchHTTP1ToServiceDeclaredHTTP2(t *testing.T) {
	inst := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Proto", r.Proto)
		w.Header().Set("X-Seen-Connection", r.Header.Get("Connection")+r.Header.Get("Keep-Alive"))
		io.WriteString(w, "hello")
	}))
	inst.Config.Protocols = new(http.Protocols)
	inst.Config.Protocols.SetUnencryptedHTTP2(true)
	inst.Start()
	t.Cleanup(inst.Close)
	front := oneInstanceMesh(t, upstreamtest.AddrOf(inst), "meshlet-protocol", "http2")
	app := upstreamtest.DialApp(t, front)
	for range 2 {
		app.Send("GET /x HTTP/1.1\r\nHost: web.local\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
		resp, body := app.Read("GET")
		if resp.StatusCode != http.StatusOK || body != "hello" || resp.Header.Get("X-Seen-Proto") != "HTTP/2.0" || resp.Header.Get("X-Seen-Connection") != "" {
			t.Fatalf("%d %q %v; want hello over HTTP/2.0 without hop-by-hop headers", resp.StatusCode, body, resp.Header)
		}
	}
	app.Send("GET /ws HTTP/1.1\r\nHost: web.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp, _ := app.Read("GET"); resp.StatusCode != http.StatusNotImplemented {
		t.Errorf("an Upgrade to a service declared http2: %d, want 501", resp.StatusCode)
	}
}
