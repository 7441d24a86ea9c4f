package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

func oneInstanceMesh(t *testing.T, addr string, meta ...string) *upstreamtest.Front {
	t.Helper()
	_, _, front := webMesh(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", addr), meta...))
	return front
}

func TestForwarderChunkedBothWays(t *testing.T) {
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Got", fmt.Sprintf("%q te=%v trailer=%q", b, r.TransferEncoding, r.Trailer.Get("X-Sum")))
		for _, part := range []string{"one,", "two"} {
			io.WriteString(w, part)
			w.(http.Flusher).Flush() // chunked, several chunks
		}
	}))
	t.Cleanup(inst.Close)
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, upstreamtest.AddrOf(inst)))
	app.Send("POST /up HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
		"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")
	resp, body := app.Read("POST")
	if want := `"hello world" te=[chunked] trailer="42"`; resp.Header.Get("X-Got") != want {
		t.Errorf("instance got %s, want %s", resp.Header.Get("X-Got"), want)
	}
	if body != "one,two" || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("answer %q framed %v, want one,two chunked", body, resp.TransferEncoding)
	}
	// The connection goes on.
	app.Send("GET /again HTTP/1.1\r\nHost: web.local\r\n\r\n")
	if resp, _ := app.Read("GET"); resp.StatusCode != 200 {
		t.Errorf("second request: %d", resp.StatusCode)
	}
}

// TestForwarderCloseDelimitedAnswerIsChunked: an answer delimited by the
// instance's close reaches the app whole, in chunks, and the app's
// connection carries the next request (as on the net/http path).
func TestForwarderCloseDelimitedAnswerIsChunked(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	for i := range 2 {
		app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
		resp, body := app.Read("GET")
		if body != "until the end" || resp.Close || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("request %d: got %q, close %t, framed %v; want the whole body, chunked, kept alive", i, body, resp.Close, resp.TransferEncoding)
		}
	}
}

func TestForwarderHeadAnd204And304HaveNoBody(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		for {
			req, _, err := upstreamtest.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/head":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
			case "/204":
				io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			case "/304":
				io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
			default:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast")
			}
		}
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	app.Send("HEAD /head HTTP/1.1\r\nHost: web.local\r\n\r\n")
	if resp, _ := app.Read("HEAD"); resp.StatusCode != 200 || resp.ContentLength != 1000 {
		t.Errorf("HEAD: %d length %d, want 200 with the length of the GET", resp.StatusCode, resp.ContentLength)
	}
	app.Send("GET /204 HTTP/1.1\r\nHost: web.local\r\n\r\nGET /304 HTTP/1.1\r\nHost: web.local\r\n\r\nGET /last HTTP/1.1\r\nHost: web.local\r\n\r\n")
	if resp, _ := app.Read("GET"); resp.StatusCode != 204 {
		t.Errorf("204: %d", resp.StatusCode)
	}
	if resp, _ := app.Read("GET"); resp.StatusCode != 304 {
		t.Errorf("304: %d", resp.StatusCode)
	}
	if resp, body := app.Read("GET"); resp.StatusCode != 200 || body != "last" {
		t.Errorf("after them: %d %q, want 200 last (no body was expected before)", resp.StatusCode, body)
	}
}

func TestForwarderPipelinedBodies(t *testing.T) {
	front := oneInstanceMesh(t, upstreamtest.AddrOf(upstreamtest.BodyEcho(t, "a")))
	app := upstreamtest.DialApp(t, front)
	var all strings.Builder
	for i := range 10 {
		body := strings.Repeat(fmt.Sprint(i), i*100+1)
		fmt.Fprintf(&all, "POST /%d HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body)
	}
	app.Send(all.String())
	for i := range 10 {
		if _, body := app.Read("POST"); body != strings.Repeat(fmt.Sprint(i), i*100+1) {
			t.Fatalf("answer %d: %d bytes %.10q..., want its own body back", i, len(body), body)
		}
	}
	if front.Accepted.Load() != 1 {
		t.Errorf("connections = %d, want 1", front.Accepted.Load())
	}
}

func TestForwarderConnectionClose(t *testing.T) {
	// The instance closes after each answer; the app keeps its connection.
	addr, conns := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	for i := range 3 {
		app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
		resp, body := app.Read("GET")
		if resp.StatusCode != 200 || body != "ok" || resp.Close {
			t.Fatalf("request %d: %d %q close %t; want 200 ok, the app's connection kept", i, resp.StatusCode, body, resp.Close)
		}
	}
	if conns.Load() != 3 {
		t.Errorf("instance connections = %d, want 3 (one per answer that said close)", conns.Load())
	}
	// The app says close: it gets the answer, then the end.
	app.Send("GET / HTTP/1.1\r\nHost: web.local\r\nConnection: close\r\n\r\n")
	if resp, body := app.Read("GET"); body != "ok" || !resp.Close {
		t.Errorf("got %q close %t, want ok with Connection: close", body, resp.Close)
	}
	if !app.Closed() {
		t.Error("the connection stayed open after the app said close")
	}
}

func TestForwarderBrokenAnswersAre502(t *testing.T) {
	for _, tc := range []struct{ name, answer string }{
		{"two content lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"},
		{"cl and te", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
		{"bare lf", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n"},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok"},
		{"cut head", "HTTP/1.1 200 OK\r\nContent-"},
		{"unasked upgrade", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
				if _, _, err := upstreamtest.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
			})
			app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
			app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
			resp, body := app.Read("GET")
			if resp.StatusCode != 502 || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeFailed || strings.Count(body, "\n") != 1 {
				t.Errorf("got %d %q %q, want a one-line 502 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body, upstream.ErrCodeFailed)
			}
		})
	}
}

func TestForwarderInstanceClosingMidBodyClosesTheApp(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
			if _, _, err := upstreamtest.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, answer)
		})
		app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
		app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
		resp, err := http.ReadResponse(app.BR, nil)
		if err != nil {
			t.Fatalf("%q: reading the head: %v", answer, err)
		}
		start := time.Now()
		_, err = io.ReadAll(resp.Body)
		if err == nil || upstreamtest.IsTimeout(err) || time.Since(start) > 3*time.Second {
			t.Errorf("%q: reading the body: %v after %v; want it cut short at once", answer, err, time.Since(start))
		}
	}
}

func TestForwarderStalePooledConnectionIsRetried(t *testing.T) {
	// Each connection serves one request, keeps alive on paper, and is
	// closed by the instance soon after: the pooled one is stale.
	addr, conns := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(20 * time.Millisecond)
	})
	// retries 0: only the retry on a new connection can save a request.
	front := oneInstanceMesh(t, addr, "meshlet-retries", "0")
	for i, method := range []string{"GET", "GET", "POST", "PUT"} {
		app := upstreamtest.DialApp(t, front)
		app.Send(method + " / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 1\r\n\r\nx")
		if resp, body := app.Read(method); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d (%s) after the pooled connection went stale: %d %q", i, method, resp.StatusCode, body)
		}
		time.Sleep(60 * time.Millisecond)
	}
	if got := conns.Load(); got != 4 {
		t.Errorf("instance connections = %d, want 4 (one per request)", got)
	}
}

func TestForwarderPassesInterimAnswers(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
	line, _ := app.BR.ReadString('\n')
	if line != "HTTP/1.1 103 Early Hints\r\n" {
		t.Fatalf("first line %q, want the 103", line)
	}
	for {
		l, err := app.BR.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l == "\r\n" {
			break
		}
	}
	if resp, body := app.Read("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("final answer %d %q", resp.StatusCode, body)
	}
}

func TestForwarderNeverPassesASmugglingAttempt(t *testing.T) {
	addr, conns := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		upstreamtest.ReadRequest(br)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	})
	front := oneInstanceMesh(t, addr)
	for _, tc := range []struct {
		raw    string
		status int
	}{
		{"POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello", 400},
		{"POST / HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: xchunked\r\n\r\n", 501},
		{"GET / HTTP/1.1\r\nHost: web.local\r\nX: a\r\n b\r\n\r\n", 400},
		{"GET / HTTP/1.1\nHost: web.local\n\n", 400},
		{"GET / HTTP/1.1\r\nHost: web.local\r\nX: \x00\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: web.local\r\nX: " + strings.Repeat("a", maxHeadSize) + "\r\n\r\n", 431},
	} {
		app := upstreamtest.DialApp(t, front)
		app.Send(tc.raw)
		resp, _ := app.Read("GET")
		if resp.StatusCode != tc.status || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeBadRequest || !resp.Close {
			t.Errorf("%.60q: %d %q close %t, want %d %s and close", tc.raw, resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), resp.Close, tc.status, upstream.ErrCodeBadRequest)
		}
	}
	if conns.Load() != 0 {
		t.Errorf("the instance got %d connections, want none", conns.Load())
	}
	// A bad chunk inside a body: the answer is a 400 and the end.
	app := upstreamtest.DialApp(t, front)
	app.Send("POST / HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
	if resp, _ := app.Read("POST"); resp.StatusCode != 400 || !app.Closed() {
		t.Errorf("bad chunk framing: %d, want 400 and a closed connection", resp.StatusCode)
	}
}

func TestForwarderTryTimeoutOnBodylessPostIsNotRetried(t *testing.T) {
	var seen atomic.Int64
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		seen.Add(1)
		time.Sleep(time.Second)
	})
	front := oneInstanceMesh(t, addr, "meshlet-try-timeout", "100ms")
	app := upstreamtest.DialApp(t, front)
	app.Send("POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 0\r\n\r\n")
	if resp, _ := app.Read("POST"); resp.StatusCode != 504 || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeTimeout {
		t.Errorf("got %d %q, want 504 %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), upstream.ErrCodeTimeout)
	}
	if seen.Load() != 1 {
		t.Errorf("the instance got the POST %d times, want once", seen.Load())
	}
}

func TestForwarderStreamsAnswersOfUnknownLength(t *testing.T) {
	for _, tc := range []struct {
		name        string
		head, parts string
	}{
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "6\r\nevent1\r\n|6\r\nevent2\r\n0\r\n\r\n"},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", "event1|event2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := make(chan struct{})
			addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
				if _, _, err := upstreamtest.ReadRequest(br); err != nil {
					return
				}
				first, second, _ := strings.Cut(tc.parts, "|")
				io.WriteString(c, tc.head+first)
				select {
				case <-next: // the app has the first event: send the second
				case <-time.After(5 * time.Second):
				}
				io.WriteString(c, second)
			})
			app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
			app.Send("GET /events HTTP/1.1\r\nHost: web.local\r\n\r\n")
			// The instance holds the second event for 5 s: the head and the
			// first must come long before.
			app.C.SetReadDeadline(time.Now().Add(2 * time.Second))
			resp, err := http.ReadResponse(app.BR, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := make([]byte, 6)
			if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != "event1" {
				t.Fatalf("first event = %q, %v; want it before the instance sends more", got, err)
			}
			close(next)
			app.C.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "event2" {
				t.Errorf("rest = %q, %v", rest, err)
			}
		})
	}
}

func TestForwarderPassesAnEarlyAnswer(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		// Refuse the upload without reading it, and close.
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
	})
	app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
	const size = 16 << 20
	app.Send(fmt.Sprintf("POST /up HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", size))
	go func() {
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := app.C.Write(chunk); err != nil {
				return // the mesh closed: expected
			}
		}
	}()
	resp, body := app.Read("POST")
	if resp.StatusCode != 413 || body != "too big\n" || !resp.Close {
		t.Errorf("got %d %q close %t, want the instance's 413 and Connection: close", resp.StatusCode, body, resp.Close)
	}
}
