package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// TestH1HeadFieldsAreCapped: a request head with more than maxFields
// fields is a 431, an answer head with as many a 502 instance-failed; at
// the cap both pass.
func TestH1HeadFieldsAreCapped(t *testing.T) {
	fields := func(n int) string { return strings.Repeat("a: 1\r\n", n) }
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		for {
			req, _, err := upstreamtest.ReadRequest(br)
			if err != nil {
				return
			}
			n := 0
			fmt.Sscan(req.URL.Query().Get("n"), &n)
			io.WriteString(c, "HTTP/1.1 200 OK\r\n"+fields(n)+"Content-Length: 2\r\n\r\nok")
		}
	})
	front := oneInstanceMesh(t, addr)
	for _, tc := range []struct {
		name    string
		req     string
		status  int
		errCode string
	}{
		{"request at the cap", "GET /?n=0 HTTP/1.1\r\nHost: web.local\r\n" + fields(maxFields-1) + "\r\n", 200, ""},
		{"request past the cap", "GET /?n=0 HTTP/1.1\r\nHost: web.local\r\n" + fields(maxFields) + "\r\n", 431, upstream.ErrCodeBadRequest},
		{"answer at the cap", "GET /?n=" + fmt.Sprint(maxFields-1) + " HTTP/1.1\r\nHost: web.local\r\n\r\n", 200, ""},
		{"answer past the cap", "GET /?n=" + fmt.Sprint(maxFields) + " HTTP/1.1\r\nHost: web.local\r\n\r\n", 502, upstream.ErrCodeFailed},
	} {
		app := upstreamtest.DialApp(t, front)
		app.Send(tc.req)
		resp, _ := app.Read("GET")
		if resp.StatusCode != tc.status || resp.Header.Get("X-Meshlet-Error") != tc.errCode {
			t.Errorf("%s: %d %q, want %d %q", tc.name, resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), tc.status, tc.errCode)
		}
	}
}

// TestH1BigHeadsAreNotRetained: app connections that stay open after
// answers with the largest heads allowed (and after refused ones, with
// tiny fields) keep little memory each.
func TestH1BigHeadsAreNotRetained(t *testing.T) {
	var big strings.Builder
	big.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n")
	line := "X-Big: " + strings.Repeat("v", (maxRespHeadSize-1024)/(maxFields-2)-9) + "\r\n"
	for range maxFields - 2 {
		big.WriteString(line)
	}
	big.WriteString("\r\n")
	tiny := "HTTP/1.1 200 OK\r\n" + strings.Repeat("a:\r\n", (maxRespHeadSize-64)/4) + "Content-Length: 0\r\n\r\n"
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		for {
			req, _, err := upstreamtest.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/tiny" {
				io.WriteString(c, tiny)
			} else {
				io.WriteString(c, big.String())
			}
		}
	})
	front := oneInstanceMesh(t, addr)
	// A request head near the limit too, which grows the app's buffer.
	reqHead := "GET /big HTTP/1.1\r\nHost: web.local\r\nX-Req: " + strings.Repeat("r", maxHeadSize-1024) + "\r\n\r\n"
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	const conns = 8
	apps := make([]*upstreamtest.App, 0, conns)
	for i := range conns {
		app := upstreamtest.DialApp(t, front)
		if i%2 == 0 {
			app.Send(reqHead)
			if resp, _ := app.Read("GET"); resp.StatusCode != 200 {
				t.Fatalf("big head: %d", resp.StatusCode)
			}
		} else {
			app.Send("GET /tiny HTTP/1.1\r\nHost: web.local\r\n\r\n")
			if resp, _ := app.Read("GET"); resp.StatusCode != 502 {
				t.Fatalf("head of tiny fields: %d, want 502", resp.StatusCode)
			}
		}
		apps = append(apps, app) // kept open and idle (the 502 closed its own)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	per := (int64(ms.HeapAlloc) - int64(before)) / conns
	t.Logf("retained per app connection: %d KiB", per>>10)
	if per > 128<<10 {
		t.Errorf("each app connection retains %d KiB after a large head", per>>10)
	}
	runtime.KeepAlive(apps)
}

// TestH1connShrinkDropsGrownBuffers: what a large head grew is dropped
// between requests; what a usual head uses is kept (no allocation).
func TestH1connShrinkDropsGrownBuffers(t *testing.T) {
	s := &h1conn{out: make([]byte, 0, 512)}
	s.rd.buf = make([]byte, readBufSize)
	s.req.fields = make([]field, 3, keptFields)
	s.shrink()
	if cap(s.req.fields) != keptFields || len(s.req.fields) != 0 || len(s.rd.buf) != readBufSize || cap(s.out) != 512 {
		t.Errorf("usual sizes not kept: fields %d/%d, buf %d, out %d", len(s.req.fields), cap(s.req.fields), len(s.rd.buf), cap(s.out))
	}
	s.req.fields = make([]field, maxFields)
	s.resp.fields = make([]field, maxFields)
	s.rd.buf = make([]byte, maxHeadSize)
	s.out = make([]byte, 0, maxHeadSize)
	s.shrink()
	if cap(s.req.fields) > keptFields || cap(s.resp.fields) > keptFields || len(s.rd.buf) != readBufSize || cap(s.out) > 16<<10 {
		t.Errorf("grown sizes kept: fields %d, %d, buf %d, out %d", cap(s.req.fields), cap(s.resp.fields), len(s.rd.buf), cap(s.out))
	}
	// Unread bytes (a pipelined request) keep the buffer they are in.
	s.rd.buf = make([]byte, maxHeadSize)
	s.rd.r, s.rd.w = 10, 20
	s.shrink()
	if len(s.rd.buf) != maxHeadSize {
		t.Error("a buffer holding unread bytes was dropped")
	}
}
