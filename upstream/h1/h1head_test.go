package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

// headOf reads the first head of raw as the forwarder does.
func headOf(t testing.TB, raw string, request bool) ([]byte, error) {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		b.Write([]byte(raw))
		b.Close()
	}()
	defer a.Close()
	var rd connReader
	rd.reset(a, make([]byte, readBufSize))
	return rd.readHead(request)
}

func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		name, raw  string
		wantStatus int // 0: accepted
		check      func(*head) string
	}{
		{"simple", "GET /x?y=1 HTTP/1.1\r\nHost: web.local\r\n\r\n", 0, func(h *head) string {
			if string(h.method) != "GET" || string(h.target) != "/x?y=1" || string(h.host) != "web.local" || h.contentLength != -1 || h.chunked {
				return "wrong fields"
			}
			return ""
		}},
		{"content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", 0, func(h *head) string {
			if h.contentLength != 12 {
				return "wrong length"
			}
			return ""
		}},
		{"identical content lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n", 0, nil},
		{"chunked any case", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, func(h *head) string {
			if !h.chunked {
				return "not chunked"
			}
			return ""
		}},
		{"ows around value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: \t v \t\r\n\r\n", 0, func(h *head) string {
			if string(h.fields[1].value) != "v" {
				return "value not trimmed"
			}
			return ""
		}},
		{"flags", "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nExpect: 100-continue\r\nTE: trailers;q=1\r\n\r\n", 0, func(h *head) string {
			if !h.upgrade || !h.expect || !h.teTrailers || !h.connKeepAlive || h.connClose {
				return "flags wrong"
			}
			return ""
		}},
		{"http/1.0 without host", "GET / HTTP/1.0\r\n\r\n", 0, nil},
		{"two different content lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, nil},
		{"content length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400, nil},
		{"negative content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400, nil},
		{"signed content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, nil},
		{"huge content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n", 400, nil},
		{"cl and te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, nil},
		{"te and cl", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, nil},
		{"te gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, nil},
		{"te identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501, nil},
		{"two te", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, nil},
		{"te with space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, nil},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, nil},
		{"bare lf", "GET / HTTP/1.1\nHost: a\n\n", 400, nil},
		{"bare lf in header", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400, nil},
		{"bare cr in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, nil},
		{"nul in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, nil},
		{"nul in name", "GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n", 400, nil},
		{"no colon", "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400, nil},
		{"empty name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, nil},
		{"bad version", "GET / FOO/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"http/2", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, nil},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400, nil},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, nil},
		{"space in host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, nil},
		{"slash in host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, nil},
		{"ipv6 host with port", "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]:8080\r\n\r\n", 0, nil},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"ctl in target", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"bad method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
		{"double space", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := headOf(t, tc.raw, true)
			if err != nil {
				t.Fatalf("readHead: %v", err)
			}
			var h head
			err = parseRequestHead(raw, &h)
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if tc.check != nil {
					if msg := tc.check(&h); msg != "" {
						t.Error(msg)
					}
				}
				return
			}
			var he *headError
			if !errors.As(err, &he) || he.status != tc.wantStatus {
				t.Errorf("err = %v, want status %d", err, tc.wantStatus)
			}
		})
	}
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		ok        bool
		status    int
	}{
		{"ok", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true, 200},
		{"no reason", "HTTP/1.1 204\r\n\r\n", true, 204},
		{"empty reason", "HTTP/1.1 404 \r\n\r\n", true, 404},
		{"http/1.0", "HTTP/1.0 200 OK\r\n\r\n", true, 200},
		{"interim", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", true, 103},
		{"two content lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", false, 0},
		{"cl and te", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0},
		{"two digit status", "HTTP/1.1 20 OK\r\n\r\n", false, 0},
		{"letters in status", "HTTP/1.1 2x0 OK\r\n\r\n", false, 0},
		{"status below 100", "HTTP/1.1 099 OK\r\n\r\n", false, 0},
		{"bare lf", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", false, 0},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", false, 0},
		{"nul", "HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", false, 0},
		{"not http", "ICY 200 OK\r\n\r\n", false, 0},
		{"no space after code", "HTTP/1.1 200OK\r\n\r\n", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := headOf(t, tc.raw, false)
			if err != nil {
				t.Fatalf("readHead: %v", err)
			}
			var h head
			err = parseResponseHead(raw, &h)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %t", err, tc.ok)
			}
			if tc.ok && h.status != tc.status {
				t.Errorf("status = %d, want %d", h.status, tc.status)
			}
		})
	}
}

func TestReadHeadLimitsAndEnds(t *testing.T) {
	if _, err := headOf(t, "GET / HTTP/1.1\r\nHost: a\r\nX: "+strings.Repeat("a", maxHeadSize)+"\r\n\r\n", true); !errors.Is(err, errHeadTooLarge) {
		t.Errorf("oversized head: err = %v, want errHeadTooLarge", err)
	}
	if _, err := headOf(t, "", true); !errors.Is(err, io.EOF) {
		t.Errorf("no bytes: err = %v, want EOF", err)
	}
	if _, err := headOf(t, "GET / HTTP/1.1\r\nHost", true); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut head: err = %v, want unexpected EOF", err)
	}
	raw, err := headOf(t, "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next", true)
	if err != nil || string(raw) != "GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
		t.Errorf("leading empty lines: %q, %v", raw, err)
	}
}

// TestOutgoingHeadRewrite checks the head the instance gets: Host, the
// forwarding headers, and no hop-by-hop field, as ReverseProxy sends it.
func TestOutgoingHeadRewrite(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain",
			"GET /p?q=1 HTTP/1.1\r\nHost: web.local\r\nUser-Agent: t\r\n\r\n",
			"GET /p?q=1 HTTP/1.1\r\nHost: web.local\r\nUser-Agent: t\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: web.local\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"app's chain kept, its other forwarding headers replaced",
			"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nHost: web.local:8080\r\nX-Forwarded-For: 3.3.3.3\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nForwarded: for=x\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: web.local:8080\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\nX-Forwarded-Host: web.local:8080\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"hop-by-hop removed, TE trailers kept",
			"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop, Content-Length\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\nProxy-Authenticate: y\r\nTE: trailers, deflate\r\nX-Keep: 2\r\nTrailer: X-T\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 2\r\nTe: trailers\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: a\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"TE without trailers dropped",
			"GET / HTTP/1.1\r\nHost: a\r\nTE: deflate\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: a\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"one content length",
			"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
			"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: a\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"chunked with its trailer announcement",
			"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
			"POST / HTTP/1.1\r\nHost: a\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: a\r\nX-Forwarded-Proto: http\r\n\r\n"},
		{"empty host: the name the app resolved",
			"GET / HTTP/1.1\r\nHost:\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: web.local\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: web.local\r\nX-Forwarded-Proto: http\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &h1conn{host: "web.local", xff: []byte("10.0.0.9")}
			raw, err := headOf(t, tc.in, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := parseRequestHead(raw, &s.req); err != nil {
				t.Fatal(err)
			}
			s.buildOut()
			if string(s.out) != tc.want {
				t.Errorf("sent\n%q\nwant\n%q", s.out, tc.want)
			}
		})
	}
}

// TestAnswerHeadRewrite checks the head the app gets.
func TestAnswerHeadRewrite(t *testing.T) {
	for _, tc := range []struct {
		name, in, cookie string
		closeApp         bool
		want             string
	}{
		{"hop-by-hop removed, version ours",
			"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Keep: 1\r\nUpgrade: h2c\r\nProxy-Authenticate: x\r\nTE: y\r\n\r\n",
			"", false,
			"HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 2\r\n\r\n"},
		{"chunked, trailer kept, cookie and close added",
			"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nSet-Cookie: a=b\r\n\r\n",
			"m=v; Path=/", true,
			"HTTP/1.1 201 Created\r\nTrailer: X-Sum\r\nSet-Cookie: a=b\r\nTransfer-Encoding: chunked\r\nSet-Cookie: m=v; Path=/\r\nConnection: close\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			s := &h1conn{bw: bufio.NewWriter(&out)}
			raw, err := headOf(t, tc.in, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := parseResponseHead(raw, &s.resp); err != nil {
				t.Fatal(err)
			}
			s.writeRespHead(&s.resp, &tc.cookie, 1, false, tc.closeApp)
			s.bw.Flush()
			if out.String() != tc.want {
				t.Errorf("app got\n%q\nwant\n%q", out.String(), tc.want)
			}
		})
	}
}

func TestParseChunkSize(t *testing.T) {
	for _, tc := range []struct {
		line string
		want int64 // -1: refused
	}{
		{"0\r\n", 0}, {"1a\r\n", 26}, {"FF\r\n", 255}, {"5;ext=1\r\n", 5}, {"5 ;ext\r\n", 5},
		{"\r\n", -1}, {"x\r\n", -1}, {"5\n", -1}, {"-5\r\n", -1}, {"0x5\r\n", -1}, {"5 x\r\n", -1},
		{"ffffffffffffffffff\r\n", -1}, {"5;a\x00\r\n", -1}, {" 5\r\n", -1},
	} {
		got, err := parseChunkSize([]byte(tc.line))
		if tc.want < 0 {
			if err == nil {
				t.Errorf("%q: accepted as %d, want refused", tc.line, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q = %d, %v; want %d", tc.line, got, err, tc.want)
		}
	}
}
