package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// The app must be able to tell an answer cut short from a whole one: a cut
// answer ends in a reset (ECONNRESET on the app's read), never in a clean
// EOF that a close-delimited or half-read answer would take for its end.

// readCut reads one answer to a GET and returns its status, the body bytes
// read and the error that ended the body (nil: it ended cleanly).
func readCut(t *testing.T, app *upstreamtest.App) (int, string, error) {
	t.Helper()
	app.C.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(app.BR, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("reading the answer's head: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), err
}

// TestH1CutAnswerResetsTheApp: an instance that fails in the middle of an
// answer (a reset, a close before Content-Length bytes) leaves the app with
// a read error; a close-delimited answer the instance ends cleanly is whole.
func TestH1CutAnswerResetsTheApp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string
		reset  bool // the instance resets rather than closes
		cut    bool // the app must see an error
	}{
		{"close-delimited, instance resets", "HTTP/1.1 200 OK\r\n\r\npart-of-a-large-answer", true, true},
		{"close-delimited, instance closes", "HTTP/1.1 200 OK\r\n\r\nthe-whole-answer", false, false},
		{"content-length, instance closes early", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part", false, true},
		{"content-length, instance resets", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part", true, true},
		{"chunked, instance closes early", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
				if _, _, err := upstreamtest.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
				time.Sleep(50 * time.Millisecond)
				if tc.reset {
					c.SetLinger(0)
				}
				c.Close()
			})
			app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
			app.Send("GET /big HTTP/1.1\r\nHost: web.local\r\n\r\n")
			status, body, err := readCut(t, app)
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			if !tc.cut {
				if err != nil || body != "the-whole-answer" {
					t.Errorf("a whole close-delimited answer read as %q, %v", body, err)
				}
				return
			}
			if err == nil {
				t.Errorf("instance failed mid-answer, yet the app read %q with no error (silent truncation)", body)
			} else if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the app's read ended with %v, want a connection reset", err)
			}
		})
	}
}

// TestH1HalfClosedAppGets502AppClosed: an app that half-closes after its
// request, while a slow instance has not answered yet, is taken as gone
// (the instance connection closes) and is told so with a 502 it can read.
func TestH1HalfClosedAppGets502AppClosed(t *testing.T) {
	sawEOF := make(chan bool, 1)
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := br.ReadByte()
		sawEOF <- err == io.EOF
	})
	_, _, front := webMesh(t, func(c *meshConfig) { c.appCheck = 50 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", addr))
	app := upstreamtest.DialApp(t, front)
	app.Send("GET /slow HTTP/1.1\r\nHost: web.local\r\n\r\n")
	app.C.(*net.TCPConn).CloseWrite()
	app.C.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, body := app.Read("GET")
	if resp.StatusCode != 502 || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeAppClosed || body != msgAppClosed+"\n" {
		t.Errorf("half-closed app got %d %q %q, want 502 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body, upstream.ErrCodeAppClosed)
	}
	if !<-sawEOF {
		t.Error("the instance connection stayed open after the app half-closed")
	}
}

// TestH1HalfClosedAppSeesErrorWhenAnswerBegun: when the app half-closes
// while an answer is under way, the rest of it is abandoned and the app's
// read fails: it never takes the part it got for the whole.
func TestH1HalfClosedAppSeesErrorWhenAnswerBegun(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\n\r\nfirst-",
		"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nfirst-",
	} {
		addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
			if _, _, err := upstreamtest.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, answer)
			time.Sleep(300 * time.Millisecond) // six slices
			io.WriteString(c, "second")
			c.Close()
		})
		_, _, front := webMesh(t, func(c *meshConfig) { c.appCheck = 50 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", addr))
		app := upstreamtest.DialApp(t, front)
		app.Send("GET /stream HTTP/1.1\r\nHost: web.local\r\n\r\n")
		app.C.(*net.TCPConn).CloseWrite()
		if _, body, err := readCut(t, app); err == nil {
			t.Errorf("%q: half-closed app read %q with no error", answer, body)
		}
	}
}

// TestH1AnswerSurvivesPipelinedRequestAtClose: when the app's connection
// ends after an answer (the request asked for Connection: close) and the
// app pipelined more behind it, the unread bytes must not reset the
// connection before the app has read the whole answer.
func TestH1AnswerSurvivesPipelinedRequestAtClose(t *testing.T) {
	const n = 4 << 20
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", n)
		io.CopyN(c, strings.NewReader(strings.Repeat("y", n)), n)
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	app.Send("GET /1 HTTP/1.1\r\nHost: web.local\r\nConnection: close\r\n\r\n")
	time.Sleep(50 * time.Millisecond)
	app.Send("GET /2 HTTP/1.1\r\nHost: web.local\r\n\r\n") // unread by the mesh
	time.Sleep(300 * time.Millisecond)                     // the app reads late
	app.C.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(app.BR, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, resp.Body)
	if got != n || err != nil {
		t.Errorf("app got %d of %d answer bytes, err %v", got, n, err)
	}
}
