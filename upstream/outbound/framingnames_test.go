package outbound

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// recordingInstance is an instance that keeps every byte it reads, and
// answers each request it reads (by net/http's reading, which takes
// Transfer_Encoding for an ordinary header) with 200.
type recordingInstance struct {
	mu  sync.Mutex
	raw bytes.Buffer
}

func (ri *recordingInstance) Write(p []byte) (int, error) {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	return ri.raw.Write(p)
}

func (ri *recordingInstance) bytes() string {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	return ri.raw.String()
}

func startRecordingInstance(t *testing.T) (*recordingInstance, string) {
	ri := &recordingInstance{}
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, _ *bufio.Reader) {
		br := bufio.NewReader(io.TeeReader(c, ri))
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Expect") == "100-continue" {
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	return ri, addr
}

// framingVariantsIn returns the header names in raw request bytes that an
// instance could read as framing headers but are not spelled as ours.
func framingVariantsIn(raw string) []string {
	var found []string
	for line := range strings.SplitSeq(raw, "\r\n") {
		name, _, ok := strings.Cut(line, ":")
		if !ok || strings.ContainsAny(name, " \t") {
			continue
		}
		if err := upstreamtest.OneFramingSpelling([]byte("X\r\n" + name + ": x\r\n")); err != nil {
			found = append(found, name)
		}
	}
	return found
}

// TestFramingVariantsNeverReachAnInstance: a request with a header that a
// CGI-style server reads as Content-Length or Transfer-Encoding (and so
// reads a different body, with a request hidden in it) is refused with
// 400, on the forwarder and on the net/http path alike, and none of its
// bytes reach the instance.
func TestFramingVariantsNeverReachAnInstance(t *testing.T) {
	ri, addr := startRecordingInstance(t)
	front := oneInstanceMesh(t, addr)
	const hidden = "GET /admin HTTP/1.1\r\nHost: web.local\r\n\r\n"
	chunkedHidden := "0\r\n\r\n" + hidden
	// After a request that goes to the net/http path, the connection
	// stays there: net/http reads its next requests itself.
	const handOff = "GET /first HTTP/1.0\r\nHost: web.local\r\nConnection: keep-alive\r\n\r\n"
	for _, tc := range []struct {
		name, first, head, body string
	}{
		{"forwarder, TE variant beside CL", "", "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		{"forwarder, CL variant beside TE", "", "POST / HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\nContent_Length: 0\r\n", chunkedHidden},
		{"forwarder, CL variant alone", "", "POST / HTTP/1.1\r\nHost: web.local\r\nCONTENT_LENGTH: 5\r\n", ""},
		{"forwarder, dotted", "", "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 48\r\ntransfer.encoding: chunked\r\n", chunkedHidden},
		{"forwarder, tilde", "", "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 48\r\nTransfer~Encoding: chunked\r\n", chunkedHidden},
		{"forwarder, after a keep-alive request", "GET /first HTTP/1.1\r\nHost: web.local\r\n\r\n", "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		// A connection's first request is read by the forwarder, which
		// refuses it before it hands a request to net/http ...
		{"HTTP/1.0, first", "", "POST / HTTP/1.0\r\nHost: web.local\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		{"Expect, first", "", "POST / HTTP/1.1\r\nHost: web.local\r\nExpect: 100-continue\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		// ... and net/http reads those that follow on its connections.
		{"net/http, HTTP/1.0", handOff, "POST / HTTP/1.0\r\nHost: web.local\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		{"net/http, HTTP/1.0 CL variant", handOff, "POST / HTTP/1.0\r\nHost: web.local\r\nContent-Length: 48\r\nContent_Length: 0\r\n", chunkedHidden},
		{"net/http, HTTP/1.1 TE variant", handOff, "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 48\r\ntransfer.encoding: chunked\r\n", chunkedHidden},
		{"net/http, CL variant beside TE", handOff, "POST / HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\nContent_Length: 0\r\n", chunkedHidden},
		{"net/http, Expect", handOff, "POST / HTTP/1.1\r\nHost: web.local\r\nExpect: 100-continue\r\nContent-Length: 48\r\nTransfer_Encoding: chunked\r\n", chunkedHidden},
		{"net/http, Upgrade", handOff, "GET / HTTP/1.1\r\nHost: web.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent_Length: 5\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := upstreamtest.DialApp(t, front)
			if tc.first != "" {
				app.Send(tc.first)
				if resp, body := app.Read("GET"); resp.StatusCode != 200 || body != "ok" || resp.Close {
					t.Fatalf("first request: %d %q, close %v", resp.StatusCode, body, resp.Close)
				}
			}
			// meshlet's body, by Content-Length, is the whole; a server
			// that takes the variant for Transfer-Encoding reads the empty
			// chunked body, then the hidden request.
			head := strings.Replace(tc.head, "Content-Length: 48", "Content-Length: "+strconv.Itoa(len(tc.body)), 1)
			app.Send(head + "\r\n" + tc.body)
			resp, body := app.Read("POST")
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeBadRequest {
				t.Errorf("status %d, X-Meshlet-Error %q (%q); want 400 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body, upstream.ErrCodeBadRequest)
			}
			if !strings.Contains(body, "could be read as Content-Length or Transfer-Encoding") {
				t.Errorf("body %q does not say why", body)
			}
			if !app.Closed() {
				t.Errorf("the app's connection stays open after the refusal")
			}
		})
	}
	// A clean request afterwards: by the time its answer comes, whatever
	// the mesh had passed on before has reached the instance too.
	app := upstreamtest.DialApp(t, front)
	app.Send("POST /clean HTTP/1.1\r\nHost: web.local\r\nContent-Length: 2\r\nX-Content-Length: 9\r\nContent-Type: text/plain\r\n\r\nhi")
	if resp, body := app.Read("POST"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("clean request: %d %q", resp.StatusCode, body)
	}
	got := ri.bytes()
	if v := framingVariantsIn(got); len(v) > 0 {
		t.Errorf("the instance received framing header variants %q:\n%s", v, got)
	}
	if strings.Contains(got, "/admin") || strings.Count(got, " HTTP/1.1\r\n") != strings.Count(got, "GET /first ")+1 || !strings.Contains(got, "POST /clean ") {
		t.Errorf("the instance received more than the clean requests:\n%s", got)
	}
	if !strings.Contains(got, "\r\nX-Content-Length: 9\r\n") {
		t.Errorf("a header that only resembles a framing one was not passed on:\n%s", got)
	}
}
