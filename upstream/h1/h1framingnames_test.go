package h1

import (
	"strings"
	"testing"
)

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
