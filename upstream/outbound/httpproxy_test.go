package outbound

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

func TestHTTPRoundRobinSpreadsOverInstances(t *testing.T) {
	a, b, c := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b"), upstreamtest.WhoAmI(t, "c")
	_, _, front := webMesh(t, nil,
		upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)), upstreamtest.Instance(t, "web", "c", upstreamtest.AddrOf(c)))
	cl := upstreamtest.Client(front)
	counts := map[string]int{}
	for range 30 {
		resp, _ := upstreamtest.Get(t, cl, "http://web.local/x")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		counts[resp.Header.Get("X-Instance")]++
	}
	want := map[string]int{"a": 10, "b": 10, "c": 10}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("requests per instance = %v, want %v", counts, want)
	}
}

func TestHTTPInstanceSeesAppsHostAndForwardedHeaders(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))

	resp, body := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/path?q=1")
	for h, want := range map[string]string{
		"X-Seen-Host": "web.local",
		"X-Seen-XFF":  "127.0.0.1",
		"X-Seen-XFH":  "web.local",
		"X-Seen-XFP":  "http",
		"X-Seen-AE":   "",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	if body != "a GET /path?q=1" {
		t.Errorf("body = %q", body)
	}

	// HTTP/1.0 without Host: the name the app resolved stands in.
	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /old HTTP/1.0\r\n\r\n")
	resp10, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading HTTP/1.0 response: %v", err)
	}
	resp10.Body.Close()
	if got := resp10.Header.Get("X-Seen-Host"); got != "web.local" {
		t.Errorf("Host seen for an HTTP/1.0 request without one = %q, want web.local", got)
	}
}

func TestHTTPKeepAliveServesManyRequestsOnOneConnection(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))

	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	// Pipelined: all requests first, then all answers, in order.
	const n = 20
	for i := range n {
		fmt.Fprintf(conn, "GET /%d HTTP/1.1\r\nHost: web.local\r\n\r\n", i)
	}
	seen := map[string]int{}
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("GET /%d", i); !strings.HasSuffix(string(body), want) {
			t.Errorf("response %d = %q, want it to end in %q", i, body, want)
		}
		seen[resp.Header.Get("X-Instance")]++
	}
	if got := front.Accepted.Load(); got != 1 {
		t.Errorf("connections accepted = %d, want 1", got)
	}
	if seen["a"] != n/2 || seen["b"] != n/2 {
		t.Errorf("requests per instance on one connection = %v, want an even split", seen)
	}
}

func TestHTTPNoHealthyInstanceIs503(t *testing.T) {
	_, _, front := webMesh(t, nil)
	resp, body := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", resp.StatusCode)
	}
	if want := "meshlet: no healthy instance of service \"web\": no instance is registered in consul\n"; body != want {
		t.Errorf("body = %q, want %q", body, want)
	}
	if got := resp.Header.Get("X-Meshlet-Error"); got != upstream.ErrCodeNoInstance {
		t.Errorf("X-Meshlet-Error = %q, want %q", got, upstream.ErrCodeNoInstance)
	}
}

func TestHTTPConsulNeverAnsweredIs503AfterFirstAnswerTimeout(t *testing.T) {
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) { c.FirstAnswerTimeout = 200 * time.Millisecond })
	_, front := serve(t, m)

	start := time.Now()
	resp, body := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/")
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("answered after %v, before FirstAnswerTimeout", waited)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeNoAnswer {
		t.Errorf("got %d %q %q, want 503 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body, upstream.ErrCodeNoAnswer)
	}
}

func TestHTTPFirstRequestWaitsForFirstAnswer(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetFailing(upstreamtest.HealthPath("web"), true)
	m := upstreamtest.NewMesh(t, fc, nil)
	_, front := serve(t, m)

	go func() {
		time.Sleep(100 * time.Millisecond)
		fc.SetHealth("web", 3, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	}()
	resp, _ := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d, want 200 once consul answered", resp.StatusCode)
	}
}

func TestHTTPDeadOnlyInstanceIs502(t *testing.T) {
	dead := upstreamtest.DeadAddr(t)
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "dead", dead))
	resp, body := upstreamtest.Get(t, upstreamtest.Client(front), "http://web.local/")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status = %d, want 502", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Meshlet-Error"); got != upstream.ErrCodeUnreachable {
		t.Errorf("X-Meshlet-Error = %q, want %q", got, upstream.ErrCodeUnreachable)
	}
	if !strings.Contains(body, `service "web"`) || !strings.Contains(body, dead) || strings.Count(body, "\n") != 1 {
		t.Errorf("body = %q, want one line naming the service and %s", body, dead)
	}
}

func TestHTTPDialFailureMovesToTheNextInstance(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)))
	cl := upstreamtest.Client(front)
	for i := range 6 {
		// POST too: the body must survive the failed first attempt.
		resp, err := cl.Post("http://web.local/p", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "a POST /p" {
			t.Errorf("request %d: %d %q, want 200 from a", i, resp.StatusCode, body)
		}
	}
}

func TestHTTPLargeBodiesStreamBothWays(t *testing.T) {
	const size = 8 << 20
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Got", fmt.Sprintf("%d %x", n, h.Sum(nil)))
		io.Copy(w, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	}))
	t.Cleanup(inst.Close)
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "big", upstreamtest.AddrOf(inst)))

	upload := make([]byte, size)
	rand.NewChaCha8([32]byte{2}).Read(upload)
	sum := sha256.Sum256(upload)
	resp, err := upstreamtest.Client(front).Post("http://web.local/up", "application/octet-stream", bytes.NewReader(upload))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if want := fmt.Sprintf("%d %x", size, sum); resp.Header.Get("X-Got") != want {
		t.Errorf("instance got %q, want %q", resp.Header.Get("X-Got"), want)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	wantDown := sha256.New()
	io.Copy(wantDown, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	if n != size || !bytes.Equal(h.Sum(nil), wantDown.Sum(nil)) {
		t.Errorf("downloaded %d bytes with sha %s, want %d with %s", n, hex.EncodeToString(h.Sum(nil)), size, hex.EncodeToString(wantDown.Sum(nil)))
	}
}

func TestHTTPMalformedRequestIs400(t *testing.T) {
	a := upstreamtest.WhoAmI(t, "a")
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	for _, raw := range []string{
		"GET / FOO/1.1\r\nHost: web.local\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web.local\r\nBad Header\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: -5\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, raw)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Errorf("%q: reading response: %v", raw, err)
			continue
		}
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: status = %d, want 400", raw, resp.StatusCode)
		}
	}
}

func TestShutdownWaitsForInFlightRequest(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finally")
	}))
	t.Cleanup(slow.Close)
	_, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "slow", upstreamtest.AddrOf(slow)))

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := upstreamtest.Client(front).Get("http://web.local/")
		if err != nil {
			got <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{resp.StatusCode, string(body), err}
	}()
	<-arrived

	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- m.Shutdown(ctx)
	}()
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if r := <-got; r.err != nil || r.status != http.StatusOK || r.body != "finally" {
		t.Errorf("in-flight request got %d %q %v, want 200 finally", r.status, r.body, r.err)
	}
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown: %v", err)
	}

	// After Shutdown, new connections are closed at once.
	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on a connection after Shutdown = %d, %v; want EOF", n, err)
	}
}

func TestShutdownClosesWhatIsLeftWhenCtxEnds(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
	}))
	t.Cleanup(func() { close(release); stuck.Close() })
	_, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "stuck", upstreamtest.AddrOf(stuck)))

	errc := make(chan error, 1)
	go func() {
		resp, err := upstreamtest.Client(front).Get("http://web.local/")
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := m.Shutdown(ctx); err == nil {
		t.Error("Shutdown = nil, want the deadline error")
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the stuck request succeeded; want its connection closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection is still open after Shutdown gave up")
	}
}

// BenchmarkProxyHTTP measures the proxy path, app to instance and back
// over loopback with keep-alive on both sides, without stickiness and
// with it: a client that keeps its cookie (parse and look up on every
// request) and clients without one (a pick and a Set-Cookie every time).
func BenchmarkProxyHTTP(b *testing.B) {
	for _, bc := range []struct {
		name   string
		meta   []string
		cookie bool // send the cookie the first answer set
	}{
		{"round-robin", nil, false},
		{"sticky-pinned", []string{"meshlet-sticky", "cookie"}, true},
		{"sticky-new-client", []string{"meshlet-sticky", "cookie"}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var entries []*api.ServiceEntry
			for _, name := range []string{"a", "b", "c"} {
				inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "ok")
				}))
				b.Cleanup(inst.Close)
				e := upstreamtest.Instance(b, "web", name, upstreamtest.AddrOf(inst))
				if bc.meta != nil {
					e.Service.Meta = map[string]string{bc.meta[0]: bc.meta[1]}
				}
				entries = append(entries, e)
			}
			_, _, front := webMesh(b, func(c *upstream.Config) { c.Logger = nil }, entries...)
			cl := upstreamtest.Client(front)
			resp, _ := upstreamtest.Get(b, cl, "http://web.local/") // warm both pools
			cookie := ""
			if bc.cookie {
				cookie = strings.SplitN(resp.Header.Get("Set-Cookie"), ";", 2)[0]
			}
			req, _ := http.NewRequest(http.MethodGet, "http://web.local/", nil)
			if cookie != "" {
				req.Header.Set("Cookie", cookie)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if bc.cookie && resp.Header.Get("Set-Cookie") != "" {
					b.Fatal("a pinned client got a new cookie")
				}
			}
		})
	}
}

func TestHTTPUpgradeBecomesABytePipe(t *testing.T) {
	inst := echoUpgradeInstance(t, func(w http.ResponseWriter) {
		http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
	})
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "ws", upstreamtest.AddrOf(inst)))

	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: web.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", resp.StatusCode)
	}
	for _, msg := range []string{"ping", "pong\x00\xff"} {
		io.WriteString(conn, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Errorf("echo over the upgraded connection = %q, %v; want %q", got, err, msg)
		}
	}
}

// echoUpgradeInstance answers `Upgrade: echo` with a 101 and then echoes
// the bytes; any other request gets plain's answer.
func echoUpgradeInstance(t *testing.T, plain func(http.ResponseWriter)) *httptest.Server {
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			plain(w)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		io.Copy(c, brw)
	}))
	t.Cleanup(inst.Close)
	return inst
}
