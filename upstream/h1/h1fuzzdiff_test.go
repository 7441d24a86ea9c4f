package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// FuzzForwardedRequestReadsAlikeInNetHTTP: what the forwarder sends an
// instance for a request it accepts (head and body) is one request to
// net/http's server too, with nothing left over that it would read as
// another (a smuggled request).
func FuzzForwardedRequestReadsAlikeInNetHTTP(f *testing.F) {
	for _, s := range smugglingSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a, X-B, close\r\nX-A: 1\r\nx-b: 2\r\nX-C: 3\r\n\r\n"))
	for _, s := range framingVariantSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := readerOf(data)
		raw, err := rd.readHead(true)
		if err != nil {
			return
		}
		s := &h1conn{host: "web.local", xff: []byte("10.0.0.9")}
		if err := parseRequestHead(raw, &s.req); err != nil || s.handsOff() {
			return
		}
		s.buildOut()
		var body bytes.Buffer
		w := bufio.NewWriter(&body)
		var b bodyCopy
		b.start(s.req.contentLength, s.req.chunked, false)
		if err := b.copy(w, &body, rd, nil); err != nil {
			return
		}
		w.Flush()
		all := append(append([]byte{}, s.out...), body.Bytes()...)
		if err := upstreamtest.OneFramingSpelling(s.out); err != nil {
			t.Fatalf("%v:\n%q\nfrom %q", err, s.out, data)
		}
		br := bufio.NewReader(bytes.NewReader(all))
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("net/http refuses what we send: %v\n%q", err, all)
		}
		if _, err := io.ReadAll(req.Body); err != nil {
			t.Fatalf("net/http cannot read the body we send: %v\n%q", err, all)
		}
		if br.Buffered() != 0 {
			t.Fatalf("net/http left %d bytes, another request: %q", br.Buffered(), all)
		}
	})
}

// framingVariantSeeds are requests whose framing some servers read
// differently from net/http: those that map '_' (and other separators) to
// '-' in header names, as CGI-style environments do.
var framingVariantSeeds = []string{
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent_Length: 40\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 40\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\ntransfer.encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTRANSFER~ENCODING: chunked\r\n\r\n0\r\n\r\n",
}
