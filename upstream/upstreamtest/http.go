package upstreamtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// WhoAmI is an instance that answers with its name and what it saw.
func WhoAmI(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", name)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-XFH", r.Header.Get("X-Forwarded-Host"))
		w.Header().Set("X-Seen-XFP", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-AE", r.Header.Get("Accept-Encoding"))
		fmt.Fprintf(w, "%s %s %s", name, r.Method, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	return srv
}

// BodyEcho answers with its name and the request body.
func BodyEcho(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Instance", name)
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// AddrOf is the "host:port" of a test server.
func AddrOf(srv *httptest.Server) string { return srv.Listener.Addr().String() }

// WithMeta sets service meta on an instance, as key, value pairs.
func WithMeta(e *api.ServiceEntry, kv ...string) *api.ServiceEntry {
	if e.Service.Meta == nil {
		e.Service.Meta = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		e.Service.Meta[kv[i]] = kv[i+1]
	}
	return e
}

// WithStatus gives an instance one service check in status, which has
// run: it has an output, as every check Consul has run has.
func WithStatus(e *api.ServiceEntry, status string) *api.ServiceEntry {
	e.Checks = api.HealthChecks{{CheckID: "check-" + e.Service.ID, ServiceID: e.Service.ID, Status: status,
		Output: "fake check: " + status}}
	return e
}

// WithResetCheck gives an instance one service check that has not run
// yet: critical and without output, as Consul registers every check (a
// restarted agent, or one that lost its state, registers them again).
func WithResetCheck(e *api.ServiceEntry) *api.ServiceEntry {
	e.Checks = api.HealthChecks{{CheckID: "check-" + e.Service.ID, ServiceID: e.Service.ID, Status: api.HealthCritical}}
	return e
}

// Client is an app's HTTP client that sends every request to the front.
func Client(front *Front) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", front.Addr)
			},
			DisableCompression: true,
		},
		Timeout: 10 * time.Second,
	}
}

// Get makes a GET of url and returns the answer with its body read.
func Get(t testing.TB, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body of %s: %v", url, err)
	}
	return resp, string(body)
}

// Do sends method with body (none when empty) to http://web.local/.
func Do(t testing.TB, c *http.Client, method, body string) (int, string, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://web.local/", rd)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// GetWith makes a GET with the given Cookie header (none when empty) and
// returns the instance and the Set-Cookie headers.
func GetWith(t testing.TB, c *http.Client, cookie string) (string, []string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://web.local/", nil)
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, error %q", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
	}
	return resp.Header.Get("X-Instance"), resp.Header.Values("Set-Cookie")
}

// TCPServer runs handle for every connection on a loopback port.
func TCPServer(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// Echo sends back what it reads and closes its side after the client did.
func Echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// RawInstance serves each connection with handle, counting connections.
func RawInstance(t testing.TB, handle func(c *net.TCPConn, br *bufio.Reader)) (string, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	addr := TCPServer(t, func(c *net.TCPConn) {
		conns.Add(1)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		handle(c, bufio.NewReader(c))
	})
	return addr, &conns
}

// ReadRequest reads one request and its body on an instance.
func ReadRequest(br *bufio.Reader) (*http.Request, string, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(req.Body)
	return req, string(b), err
}

// App is the app's side of one raw connection to the front.
type App struct {
	t  testing.TB
	C  net.Conn
	BR *bufio.Reader
}

// DialApp connects to the front, with a deadline of 10 s on the whole
// connection.
func DialApp(t testing.TB, front *Front) *App {
	t.Helper()
	c, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &App{t: t, C: c, BR: bufio.NewReader(c)}
}

// Send writes raw bytes.
func (a *App) Send(raw string) {
	a.t.Helper()
	if _, err := io.WriteString(a.C, raw); err != nil {
		a.t.Fatalf("sending: %v", err)
	}
}

// Read reads one answer to a request of method, body included.
func (a *App) Read(method string) (*http.Response, string) {
	a.t.Helper()
	resp, err := http.ReadResponse(a.BR, &http.Request{Method: method})
	if err != nil {
		a.t.Fatalf("reading the answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		a.t.Fatalf("reading the answer's body: %v", err)
	}
	return resp, string(body)
}

// Closed reports whether the mesh closed the connection: EOF (or a
// reset) comes before the deadline.
func (a *App) Closed() bool {
	a.C.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := a.BR.ReadByte()
	return err != nil && !IsTimeout(err)
}

// IsTimeout reports whether err is a net.Error that timed out.
func IsTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// StickyMeta is the service meta that makes a service sticky on the
// cookie CONTAINERID.
var StickyMeta = []string{"meshlet-sticky", "cookie", "meshlet-sticky-cookie", "CONTAINERID"}

// OneFramingSpelling checks the head sent to an instance: every header
// whose name, without separators and case, is a framing header's must be
// that header as we write it, once. Written apart from the front-ends' own test (frontend.FramingLike), so
// that the two are checked against each other.
func OneFramingSpelling(out []byte) error {
	seen := map[string]int{}
	lines := strings.Split(string(out), "\r\n")
	for _, line := range lines[1:] {
		name, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		norm := strings.Map(func(r rune) rune {
			switch {
			case 'a' <= r && r <= 'z', '0' <= r && r <= '9':
				return r
			case 'A' <= r && r <= 'Z':
				return r + 'a' - 'A'
			}
			return -1
		}, name)
		if norm != "contentlength" && norm != "transferencoding" {
			continue
		}
		if name != "Content-Length" && name != "Transfer-Encoding" {
			return fmt.Errorf("header %q sent, which an instance may read as a framing header", name)
		}
		if seen[name]++; seen[name] > 1 {
			return fmt.Errorf("%s sent twice", name)
		}
	}
	if len(seen) > 1 {
		return fmt.Errorf("both framing headers sent")
	}
	return nil
}
