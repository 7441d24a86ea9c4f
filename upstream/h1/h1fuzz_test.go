package h1

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// bytesConn is a net.Conn that reads from a byte slice and ends with EOF.
type bytesConn struct {
	net.Conn // nil: only Read is used
	r        *bytes.Reader
	w        io.Writer // nil: writes are dropped
}

func (c *bytesConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error) {
	if c.w != nil {
		return c.w.Write(p)
	}
	return len(p), nil
}
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }
func (c *bytesConn) Close() error                     { return nil }
func readerOf(b []byte) *connReader                   { return newReaderOf(b, readBufSize) }
func newReaderOf(b []byte, size int) *connReader {
	r := &connReader{}
	r.reset(&bytesConn{r: bytes.NewReader(b)}, make([]byte, size))
	return r
}
func hopKind(k fieldKind) bool        { return k == fieldHop || k == fieldConnection || k == fieldUpgrade }
func forwardingKind(k fieldKind) bool { return k == fieldForwarded || k == fieldXFF }

var smugglingSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\r\n : chunked\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\rContent-Length: 5\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host, X-Forwarded-For\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
	"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
}

func FuzzRequestHead(f *testing.F) {
	for _, s := range smugglingSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		raw, err := readerOf(data).readHead(true)
		if err != nil {
			return
		}
		s := &h1conn{host: "web.local", xff: []byte("10.0.0.9")}
		if err := parseRequestHead(raw, &s.req); err != nil {
			return
		}
		in := &s.req
		if in.chunked && in.contentLength >= 0 {
			t.Fatalf("accepted both framings: %q", raw)
		}
		s.buildOut()
		// What the instance gets must parse the same way, as one head.
		var out head
		outRaw, err := readerOf(s.out).readHead(false)
		if err != nil || len(outRaw) != len(s.out) {
			t.Fatalf("sent head does not read back as one head: %v\n%q", err, s.out)
		}
		if err := parseRequestHead(outRaw, &out); err != nil {
			t.Fatalf("sent head refused: %v\n%q\nfrom %q", err, s.out, raw)
		}
		if out.contentLength != in.contentLength || out.chunked != in.chunked || out.hosts != 1 ||
			!bytes.Equal(out.method, in.method) || !bytes.Equal(out.target, in.target) || out.minor != 1 {
			t.Fatalf("sent head differs in meaning:\n%q\nfrom %q", s.out, raw)
		}
		xff := 0
		for _, f := range out.fields {
			if hopKind(f.kind) {
				t.Fatalf("hop-by-hop field %q sent:\n%q", f.name, s.out)
			}
			if f.kind == fieldXFF {
				xff++
			}
		}
		if xff != 1 {
			t.Fatalf("%d X-Forwarded-For lines sent:\n%q", xff, s.out)
		}
	})
}

func FuzzResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: \x00\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
		"HTTP/1.1 999\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		raw, err := readerOf(data).readHead(false)
		if err != nil {
			return
		}
		var in head
		if err := parseResponseHead(raw, &in); err != nil {
			return
		}
		if in.chunked && in.contentLength >= 0 {
			return // refused by try, which sees the framing with the request
		}
		var buf bytes.Buffer
		s := &h1conn{bw: bufio.NewWriter(&buf)}
		cookie := "c=v"
		s.writeRespHead(&in, &cookie, 1, false, false)
		s.bw.Flush()
		outRaw, err := readerOf(buf.Bytes()).readHead(false)
		if err != nil || len(outRaw) != buf.Len() {
			t.Fatalf("head to the app does not read back as one head: %v\n%q", err, buf.Bytes())
		}
		var out head
		if err := parseResponseHead(outRaw, &out); err != nil {
			t.Fatalf("head to the app refused: %v\n%q", err, buf.Bytes())
		}
		if out.status != in.status || out.contentLength != in.contentLength || out.chunked != in.chunked {
			t.Fatalf("head to the app differs in meaning:\n%q\nfrom %q", buf.Bytes(), raw)
		}
		for _, f := range out.fields {
			if hopKind(f.kind) {
				t.Fatalf("hop-by-hop field %q passed on:\n%q", f.name, buf.Bytes())
			}
		}
	})
}

// FuzzChunkedBody: a chunked body the forwarder accepts is passed on byte
// for byte but for trailer fields of a framing name, which are dropped, and
// what it passes on is exactly one chunked body.
func FuzzChunkedBody(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"-1\r\nx\r\n0\r\n\r\n",
		"ffffffffffffffffff\r\n",
		"5\nhello\n0\n\n",
		"0\r\nX: a\r\n b\r\n\r\n",
		"3\r\nabc\r\n0\r\nContent-Length: 9\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		src := newReaderOf(data, 16) // small: every path of the copy runs
		var b bodyCopy
		b.start(-1, true, false)
		rec := &replayBuf{}
		if err := b.copy(w, &bytesConn{w: w}, src, rec); err != nil {
			return
		}
		w.Flush()
		consumed := len(data) - len(src.buffered()) - src.c.(*bytesConn).r.Len()
		want := withoutFramingTrailers(t, data[:consumed])
		if !bytes.Equal(out.Bytes(), want) || !bytes.Equal(rec.b, want) {
			t.Fatalf("passed on %q, recorded %q; want %q", out.Bytes(), rec.b, want)
		}
		var again bodyCopy
		again.start(-1, true, false)
		src2 := readerOf(out.Bytes())
		if err := again.copy(bufio.NewWriter(io.Discard), &bytesConn{}, src2, nil); err != nil || len(src2.buffered()) != 0 {
			t.Fatalf("what was passed on is not one chunked body: %v", err)
		}
	})
}

// withoutFramingTrailers returns an accepted chunked body without the
// trailer lines whose field name folds to Content-Length or
// Transfer-Encoding, written apart from the forwarder's own parser.
func withoutFramingTrailers(t *testing.T, body []byte) []byte {
	rest := body
	for {
		i := bytes.Index(rest, []byte("\r\n"))
		if i < 0 {
			t.Fatalf("accepted body without a last chunk: %q", body)
		}
		size := rest[:i]
		if j := bytes.IndexByte(size, ';'); j >= 0 {
			size = size[:j]
		}
		n, err := strconv.ParseUint(string(bytes.TrimRight(size, " \t")), 16, 63)
		if err != nil {
			t.Fatalf("accepted chunk size %q: %v", rest[:i], err)
		}
		rest = rest[i+2:]
		if n == 0 {
			break
		}
		rest = rest[n+2:]
	}
	out := append([]byte(nil), body[:len(body)-len(rest)]...)
	for len(rest) > 0 {
		i := bytes.Index(rest, []byte("\r\n"))
		line := rest[:i+2]
		rest = rest[i+2:]
		if c := bytes.IndexByte(line, ':'); c > 0 && frontend.FramingLike(line[:c]) {
			continue
		}
		out = append(out, line...)
	}
	return out
}
