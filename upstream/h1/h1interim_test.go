package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// TestH1InterimAnswerDuringSlowUploadKeepsUploading: an instance that
// sends an interim answer (103 Early Hints, 102 Processing) before it
// reads a large upload slowly gets the whole body, and the app gets the
// interim answer and then the final one. Only a final head (or a close)
// is an early answer that ends the upload.
func TestH1InterimAnswerDuringSlowUploadKeepsUploading(t *testing.T) {
	const n = 16 << 20
	for _, interim := range []string{
		"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
		"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.css>; rel=preload\r\n\r\n",
	} {
		got := make(chan int64, 1)
		addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(c, interim)
			time.Sleep(300 * time.Millisecond) // not reading for six slices
			k, _ := io.Copy(io.Discard, req.Body)
			got <- k
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		})
		_, _, front := webMesh(t, func(c *meshConfig) { c.appCheck = 50 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", addr))
		app := upstreamtest.DialApp(t, front)
		go func() {
			fmt.Fprintf(app.C, "POST /up HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", n)
			io.CopyN(app.C, strings.NewReader(strings.Repeat("x", n)), n)
		}()
		app.C.SetReadDeadline(time.Now().Add(3 * time.Second))
		var codes []int
		resp, body := app.Read("POST")
		for resp.StatusCode < 200 {
			codes = append(codes, resp.StatusCode)
			resp, body = app.Read("POST")
		}
		if resp.StatusCode != 200 || body != "ok" || len(codes) != strings.Count(interim, "HTTP/1.1 1") {
			t.Errorf("app got interim %v then %d %q; want %d interim answers then 200 ok", codes, resp.StatusCode, body, strings.Count(interim, "HTTP/1.1 1"))
		}
		select {
		case k := <-got:
			if k != n {
				t.Errorf("instance got %d body bytes, want %d", k, n)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("instance never got the body")
		}
	}
}

func TestFinalHeadIn(t *testing.T) {
	for _, tc := range []struct {
		in    string
		final bool
	}{
		{"", false},
		{"HTT", false},
		{"HTTP/1.1 1", false},
		{"HTTP/1.1 103 Early", false},
		{"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n", false},
		{"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.0 103 Early Hints\r\n\r\n", false},
		{"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 2", true},
		{"HTTP/1.1 200 OK\r\n", true},
		{"HTTP/1.1 2", true},
		{"HTTP/1.1 413 Too Large\r\n\r\n", true},
		{"HTTP/1.1 101 Switching", true},
		{"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 500", true},
		{"garbage", true},
		{"HTTP/2.0 100", true},
		// Heads ended by bare line feeds, which readHead accepts from instances.
		{"HTTP/1.1 103 X\n\nHTTP/1.1 413 X\n\n", true},
		{"HTTP/1.1 103 X\nLink: <a>\r\n\nHTTP/1.1 200", true},
		{"HTTP/1.1 103 X\n\n", false},
	} {
		if got := finalHeadIn([]byte(tc.in)); got != tc.final {
			t.Errorf("finalHeadIn(%q) = %v, want %v", tc.in, got, tc.final)
		}
	}
}

// FuzzFinalHeadIn: what finalHeadIn takes for interim heads only is read
// by the forwarder as interim heads (or refused), never as a final answer;
// and more bytes never turn a final answer back into an interim one.
func FuzzFinalHeadIn(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n",
		"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 1",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.0 199 X\r\nA: b\r\n\r\nHTTP/1.1 413 No\r\n\r\n",
		"HTTP/1.1 103\r\n\r\n",
		"\r\n",
	} {
		f.Add([]byte(s), []byte("HTTP/1.1 200 OK\r\n\r\n"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		final := finalHeadIn(b)
		if final {
			if !finalHeadIn(append(b[:len(b):len(b)], more...)) {
				t.Fatalf("%q is final, %q after it is not", b, more)
			}
			return
		}
		rd := newReaderOf(b, len(b)+1)
		for {
			raw, err := rd.readHead(false)
			if err != nil {
				return // the end of b: a partial head, or none
			}
			var h head
			if err := parseResponseHead(raw, &h); err != nil {
				return // refused when it is read
			}
			if h.status >= 200 || h.status == 101 {
				t.Fatalf("%q taken for interim heads, yet it holds a %d", b, h.status)
			}
		}
	})
}
