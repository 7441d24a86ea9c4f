package outbound

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// protocol is what a connection's first bytes say it speaks.
type protocol int

const (
	protoTCP  protocol = iota // anything we do not parse: proxied per connection
	protoHTTP                 // HTTP/1.x: proxied per request
	protoH2                   // prior-knowledge h2c: proxied per request (stream)
)

func (p protocol) String() string {
	switch p {
	case protoHTTP:
		return "http"
	case protoH2:
		return "h2c"
	}
	return "tcp"
}

// h2Preface is how a prior-knowledge HTTP/2 connection begins.
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// httpMethods are the request-line starts that make a connection HTTP. A
// fixed list rather than any token, so that text protocols with a
// "WORD SP" command (Redis inline commands, SMTP-like clients) stay TCP.
// "PRI " is not among them: only the whole HTTP/2 preface (h2Preface)
// makes a connection h2c.
var httpMethods = [][]byte{
	[]byte("GET "), []byte("HEAD "), []byte("POST "), []byte("PUT "),
	[]byte("DELETE "), []byte("CONNECT "), []byte("OPTIONS "), []byte("TRACE "),
	[]byte("PATCH "), []byte("PROPFIND "), []byte("PROPPATCH "), []byte("MKCOL "),
	[]byte("COPY "), []byte("MOVE "), []byte("LOCK "), []byte("UNLOCK "),
	[]byte("REPORT "), []byte("SEARCH "), []byte("PURGE "),
}

// maxSniffLen is the most bytes classify needs to decide.
const maxSniffLen = len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// classify tells the protocol from a connection's first bytes. decided
// is false while b is still the beginning of some method; once decided,
// more bytes never change the answer.
func classify(b []byte) (p protocol, decided bool) {
	undecided := false
	if n := min(len(b), len(h2Preface)); bytes.Equal(b[:n], h2Preface[:n]) {
		if n == len(h2Preface) {
			return protoH2, true
		}
		undecided = true
	}
	for _, m := range httpMethods {
		n := min(len(b), len(m))
		if !bytes.Equal(b[:n], m[:n]) {
			continue
		}
		if len(b) >= len(m) {
			return protoHTTP, true
		}
		undecided = true
	}
	if undecided {
		return protoTCP, false
	}
	return protoTCP, true
}

// sniff reads the first bytes of conn, for at most timeout, and returns
// the protocol and the bytes it read, which the caller must replay. A
// client that sends nothing in time, or closes its side first, is TCP.
func sniff(conn net.Conn, timeout time.Duration) (protocol, []byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return protoTCP, nil, fmt.Errorf("setting the sniff deadline: %w", err)
	}
	buf := make([]byte, 0, 512)
	p, err := sniffInto(conn, &buf)
	if err != nil {
		return p, buf, err
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return p, buf, fmt.Errorf("clearing the sniff deadline: %w", err)
	}
	return p, buf, nil
}

func sniffInto(r io.Reader, buf *[]byte) (protocol, error) {
	b := *buf
	defer func() { *buf = b }()
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if p, ok := classify(b); ok {
			return p, nil
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, io.EOF):
			return protoTCP, nil
		default:
			return protoTCP, fmt.Errorf("reading the first bytes: %w", err)
		}
		if len(b) == cap(b) {
			return protoTCP, nil // unreachable while cap(b) > maxSniffLen
		}
	}
}
