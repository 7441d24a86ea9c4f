package h1

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// quickCheck makes the forwarder look at the other side every 50 ms, and
// counts the mesh's logs by level.
func quickCheck(lc *upstreamtest.LevelCounter) func(*meshConfig) {
	return func(c *meshConfig) {
		c.appCheck = 50 * time.Millisecond
		c.Logger = slog.New(lc)
	}
}

// TestH1AppGoneWhileInstanceStallsClosesInstanceConn: with no timeout,
// an app that leaves while its instance is silent (a long poll, a stall)
// takes the instance connection with it, at every stage of the answer,
// and the instance is not blamed for it.
func TestH1AppGoneWhileInstanceStallsClosesInstanceConn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string // what the instance sends before it stalls
		read   int    // bytes the app reads before it leaves
	}{
		{"before the head", "", 0},
		{"in a close-delimited body", "HTTP/1.1 200 OK\r\n\r\nfirst", 24},
		{"in a chunked body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n", 30},
		// Large enough to be spliced to the app.
		{"in a long body", fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", 1<<20, strings.Repeat("x", 100<<10)), 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sawEOF := make(chan time.Duration, 1)
			addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
				if _, _, err := upstreamtest.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
				start := time.Now()
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := br.ReadByte(); err == io.EOF { // the mesh sends nothing more: it closes
					sawEOF <- time.Since(start)
				} else {
					sawEOF <- -1
				}
			})
			lc := &upstreamtest.LevelCounter{}
			_, _, front := webMesh(t, quickCheck(lc), upstreamtest.Instance(t, "web", "a", addr))
			app := upstreamtest.DialApp(t, front)
			app.Send("GET /slow HTTP/1.1\r\nHost: web.local\r\n\r\n")
			if tc.read > 0 {
				if _, err := io.ReadFull(app.BR, make([]byte, tc.read)); err != nil {
					t.Fatalf("the answer's start: %v", err)
				}
			} else {
				time.Sleep(100 * time.Millisecond)
			}
			app.C.Close()
			if d := <-sawEOF; d < 0 || d > time.Second {
				t.Errorf("instance connection still open %v after the app left (want closed within 1s)", d)
			}
			if n := lc.Count(slog.LevelWarn); n != 0 {
				t.Errorf("%d warnings: the instance was blamed for the app leaving", n)
			}
		})
	}
}

// TestH1SilentInstanceStaysWhileTheAppWaits: slices of the wait end, the
// app is still there: the answer comes whenever the instance sends it, also
// when the app pipelined its next request meanwhile.
func TestH1SilentInstanceStaysWhileTheAppWaits(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		for {
			if _, _, err := upstreamtest.ReadRequest(br); err != nil {
				return
			}
			time.Sleep(300 * time.Millisecond) // six slices
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
		}
	})
	lc := &upstreamtest.LevelCounter{}
	_, _, front := webMesh(t, quickCheck(lc), upstreamtest.Instance(t, "web", "a", addr))
	app := upstreamtest.DialApp(t, front)
	app.Send("GET /1 HTTP/1.1\r\nHost: web.local\r\n\r\nGET /2 HTTP/1.1\r\nHost: web.local\r\n\r\n")
	for i := range 2 {
		if resp, body := app.Read("GET"); resp.StatusCode != 200 || body != "late" {
			t.Errorf("answer %d: %d %q, want 200 late", i+1, resp.StatusCode, body)
		}
	}
}

// TestH1InstanceAnsweringBeforeReadingTheBodyIsRelayed: an instance that
// writes a large answer before it reads a large upload gets its answer to
// the app (both sides used to wait on full socket buffers forever).
func TestH1InstanceAnsweringBeforeReadingTheBodyIsRelayed(t *testing.T) {
	const n = 32 << 20
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", n)
		io.CopyN(c, strings.NewReader(strings.Repeat("y", n)), n)
		io.Copy(io.Discard, req.Body) // the body only after the answer
	})
	_, _, front := webMesh(t, func(c *meshConfig) { c.appCheck = 50 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", addr))
	app := upstreamtest.DialApp(t, front)
	app.C.SetDeadline(time.Now().Add(3 * time.Second))
	go func() {
		fmt.Fprintf(app.C, "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", n)
		io.CopyN(app.C, strings.NewReader(strings.Repeat("x", n)), n)
	}()
	resp, err := http.ReadResponse(app.BR, nil)
	if err != nil {
		t.Fatalf("no answer head: %v", err)
	}
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || got != n {
		t.Fatalf("answer body %d bytes, err %v; want %d", got, err, n)
	}
	if !resp.Close {
		t.Error("the answer does not close the connection; the rest of the body is unread")
	}
}

// TestH1SlowReadingInstanceGetsTheWholeUpload: an instance that stops
// reading for longer than a slice without answering gets the whole body
// afterwards, intact.
func TestH1SlowReadingInstanceGetsTheWholeUpload(t *testing.T) {
	const n = 16 << 20
	got := make(chan string, 1)
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		time.Sleep(400 * time.Millisecond) // the socket buffers fill
		h := 0
		b := make([]byte, 64<<10)
		total := 0
		for {
			k, err := req.Body.Read(b)
			for _, c := range b[:k] {
				h = h*31 + int(c)
			}
			total += k
			if err != nil {
				break
			}
		}
		got <- fmt.Sprint(total, h)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	_, _, front := webMesh(t, quickCheck(&upstreamtest.LevelCounter{}), upstreamtest.Instance(t, "web", "a", addr))
	app := upstreamtest.DialApp(t, front)
	body := make([]byte, n)
	h := 0
	for i := range body {
		body[i] = byte(i*7 + i>>13)
		h = h*31 + int(body[i])
	}
	go func() {
		fmt.Fprintf(app.C, "POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", n)
		app.C.Write(body)
	}()
	if resp, b := app.Read("POST"); resp.StatusCode != 200 || b != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
	if want := fmt.Sprint(n, h); <-got != want {
		t.Error("the instance got another body than the app sent")
	}
}

// TestH1AppResetDuringLargeUploadIsNotTheInstancesFailure: an app that
// resets its connection during an upload, before or after the size where
// it is copied in large blocks, does not count against the instance.
func TestH1AppResetDuringLargeUploadIsNotTheInstancesFailure(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	lc := &upstreamtest.LevelCounter{}
	_, m, front := webMesh(t, quickCheck(lc), upstreamtest.Instance(t, "web", "a", addr))
	for _, n := range []int{32 << 10, 256 << 10} {
		app := upstreamtest.DialApp(t, front)
		app.Send(fmt.Sprintf("POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", 10<<20))
		app.Send(strings.Repeat("x", n))
		time.Sleep(200 * time.Millisecond)
		app.C.(*net.TCPConn).SetLinger(0)
		app.C.Close()
		time.Sleep(200 * time.Millisecond)
		if w := lc.Count(slog.LevelWarn); w != 0 {
			t.Errorf("app reset after %d body bytes: %d warnings (the instance blamed), want 0", n, w)
		}
	}
	if f := m.ConsecutiveFailures("web", "a"); f != 0 {
		t.Errorf("the instance has %d failures, want 0", f)
	}
}

// TestH1AppLeavingDuringTheAnswerIsNotTheInstancesFailure: an app that
// leaves in the middle of a large answer is logged at Debug only.
func TestH1AppLeavingDuringTheAnswerIsNotTheInstancesFailure(t *testing.T) {
	const n = 64 << 20
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		if _, _, err := upstreamtest.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", n)
		io.CopyN(c, strings.NewReader(strings.Repeat("y", n)), n)
	})
	lc := &upstreamtest.LevelCounter{}
	_, m, front := webMesh(t, quickCheck(lc), upstreamtest.Instance(t, "web", "a", addr))
	app := upstreamtest.DialApp(t, front)
	app.Send("GET /big HTTP/1.1\r\nHost: web.local\r\n\r\n")
	if _, err := io.ReadFull(app.BR, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	app.C.(*net.TCPConn).SetLinger(0)
	app.C.Close()
	upstreamtest.Eventually(t, "the mesh done with the connection", func() bool { return front.Returned.Load() == 1 })
	if w := lc.Count(slog.LevelWarn); w != 0 {
		t.Errorf("%d warnings for an app that left mid-answer, want 0", w)
	}
	if f := m.ConsecutiveFailures("web", "a"); f != 0 {
		t.Errorf("the instance has %d failures, want 0", f)
	}
}

// TestH1AppBodyPastTheRequestTimeoutIs504: a request body still coming
// when the request's timeout passes gets the 504 the net/http path gave,
// not a silent close.
func TestH1AppBodyPastTheRequestTimeoutIs504(t *testing.T) {
	addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
		upstreamtest.ReadRequest(br)
	})
	front := oneInstanceMesh(t, addr, "meshlet-timeout", "300ms")
	app := upstreamtest.DialApp(t, front)
	app.Send("POST / HTTP/1.1\r\nHost: web.local\r\nContent-Length: 10\r\n\r\nabc")
	start := time.Now()
	resp, _ := app.Read("POST")
	if resp.StatusCode != 504 || resp.Header.Get("X-Meshlet-Error") != upstream.ErrCodeTimeout || !resp.Close {
		t.Errorf("got %d %q close %v, want 504 %s and Connection: close", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), resp.Close, upstream.ErrCodeTimeout)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("answered after %v, want about the timeout of 300ms", d)
	}
}

// TestH1AnswerHeadsUpTo256KiBPass: answer heads larger than request heads
// may be (net/http allows 10 MB); past 256 KiB they are a 502.
func TestH1AnswerHeadsUpTo256KiBPass(t *testing.T) {
	for _, tc := range []struct {
		size int
		want int
	}{
		{200 << 10, 200},
		{maxRespHeadSize + 1, 502},
	} {
		addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
			if _, _, err := upstreamtest.ReadRequest(br); err != nil {
				return
			}
			var b strings.Builder
			b.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
			for i := 0; b.Len() < tc.size; i++ {
				fmt.Fprintf(&b, "X-Big-%d: %s\r\n", i, strings.Repeat("v", 1000))
			}
			b.WriteString("\r\nok")
			io.WriteString(c, b.String())
		})
		app := upstreamtest.DialApp(t, oneInstanceMesh(t, addr))
		app.Send("GET / HTTP/1.1\r\nHost: web.local\r\n\r\n")
		if resp, _ := app.Read("GET"); resp.StatusCode != tc.want {
			t.Errorf("answer head of %d bytes: %d, want %d", tc.size, resp.StatusCode, tc.want)
		}
	}
}

// TestH1AppThatPipelinedThenLeftIsSeen: an app that pipelined its next
// request and then closed its connection, while the instance stalls, is
// seen as gone (its FIN is behind the pipelined bytes): the instance
// connection closes as for an app that leaves without pipelining.
func TestH1AppThatPipelinedThenLeftIsSeen(t *testing.T) {
	for _, leave := range []string{"close", "half-close"} {
		sawEOF := make(chan time.Duration, 1)
		addr, _ := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
			if _, _, err := upstreamtest.ReadRequest(br); err != nil {
				return
			}
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := br.ReadByte(); err == io.EOF {
				sawEOF <- time.Since(start)
			} else {
				sawEOF <- -1
			}
		})
		_, _, front := webMesh(t, func(c *meshConfig) { c.appCheck = 50 * time.Millisecond }, upstreamtest.Instance(t, "web", "a", addr))
		app := upstreamtest.DialApp(t, front)
		app.Send("GET /1 HTTP/1.1\r\nHost: web.local\r\n\r\n")
		time.Sleep(100 * time.Millisecond)
		app.Send("GET /2 HTTP/1.1\r\nHost: web.local\r\n\r\n") // waits in the socket
		if leave == "close" {
			app.C.Close()
		} else {
			app.C.(*net.TCPConn).CloseWrite()
		}
		if d := <-sawEOF; d < 0 || d > time.Second {
			t.Errorf("%s: instance connection still open %v after the (pipelining) app left", leave, d)
		}
	}
}
