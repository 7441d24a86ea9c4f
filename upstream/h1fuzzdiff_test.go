package upstream

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
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
		s := &h1conn{target: &connTarget{host: "web.local"}, xff: []byte("10.0.0.9")}
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
		if err := oneFramingSpelling(s.out); err != nil {
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

// oneFramingSpelling checks the head sent to an instance: every header
// whose name, without separators and case, is a framing header's must be
// that header as we write it, once. Written apart from framingLike, so
// that the two are checked against each other.
func oneFramingSpelling(out []byte) error {
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
