package upstream

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
)

func TestFramingLike(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"Content-Length", true}, // callers test the real names first
		{"Transfer-Encoding", true},
		{"Content_Length", true},
		{"content_length", true},
		{"Transfer_Encoding", true},
		{"TRANSFER_ENCODING", true},
		{"transfer.encoding", true},
		{"Content.Length", true},
		{"Content~Length", true},
		{"Transfer--Encoding", true},
		{"_Transfer_Encoding_", true},
		{"ContentLength", true},
		{"TransferEncoding", true},
		{"Content-Type", false},
		{"Content-Lengths", false},
		{"X-Content-Length", false},
		{"Content-Length2", false},
		{"Transfer-Encodin", false},
		{"Content-Encoding", false},
		{"TE", false},
		{"", false},
	} {
		if got := framingLike(tc.name); got != tc.want {
			t.Errorf("framingLike(%q) = %v, want %v", tc.name, got, tc.want)
		}
		if got := framingLike([]byte(tc.name)); got != tc.want {
			t.Errorf("framingLike([]byte(%q)) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestParseRequestHeadRefusesFramingVariants(t *testing.T) {
	for _, raw := range []string{
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer_Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent_Length: 4\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 4\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\ntransfer.encoding: chunked\r\n\r\n",
		// Named in Connection, it would be dropped; refused all the same.
		"POST / HTTP/1.1\r\nHost: a\r\nConnection: Transfer_Encoding\r\nTransfer_Encoding: chunked\r\n\r\n",
	} {
		var h head
		err := parseRequestHead([]byte(raw), &h)
		he, ok := err.(*headError)
		if !ok || he.status != 400 || !strings.Contains(he.msg, "could be read as Content-Length or Transfer-Encoding") {
			t.Errorf("%q: err = %v, want a 400 that names the framing header", raw, err)
		}
	}
	// Answers are the app's business, and pass as they are.
	var h head
	if err := parseResponseHead([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer_Encoding: chunked\r\n\r\n"), &h); err != nil {
		t.Errorf("answer with Transfer_Encoding refused: %v", err)
	}
}

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
	addr, _ := rawInstance(t, func(c *net.TCPConn, _ *bufio.Reader) {
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
		if err := oneFramingSpelling([]byte("X\r\n" + name + ": x\r\n")); err != nil {
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
			app := dialApp(t, front)
			if tc.first != "" {
				app.send(tc.first)
				if resp, body := app.read("GET"); resp.StatusCode != 200 || body != "ok" || resp.Close {
					t.Fatalf("first request: %d %q, close %v", resp.StatusCode, body, resp.Close)
				}
			}
			// meshlet's body, by Content-Length, is the whole; a server
			// that takes the variant for Transfer-Encoding reads the empty
			// chunked body, then the hidden request.
			head := strings.Replace(tc.head, "Content-Length: 48", "Content-Length: "+strconv.Itoa(len(tc.body)), 1)
			app.send(head + "\r\n" + tc.body)
			resp, body := app.read("POST")
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Meshlet-Error") != ErrCodeBadRequest {
				t.Errorf("status %d, X-Meshlet-Error %q (%q); want 400 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body, ErrCodeBadRequest)
			}
			if !strings.Contains(body, "could be read as Content-Length or Transfer-Encoding") {
				t.Errorf("body %q does not say why", body)
			}
			if !app.closed() {
				t.Errorf("the app's connection stays open after the refusal")
			}
		})
	}
	// A clean request afterwards: by the time its answer comes, whatever
	// the mesh had passed on before has reached the instance too.
	app := dialApp(t, front)
	app.send("POST /clean HTTP/1.1\r\nHost: web.local\r\nContent-Length: 2\r\nX-Content-Length: 9\r\nContent-Type: text/plain\r\n\r\nhi")
	if resp, body := app.read("POST"); resp.StatusCode != 200 || body != "ok" {
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
