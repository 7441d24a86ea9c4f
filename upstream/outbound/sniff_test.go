package outbound

import (
	"bytes"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    protocol
		decided bool
	}{
		{"", protoTCP, false},
		{"G", protoTCP, false},
		{"GET", protoTCP, false},
		{"GET ", protoHTTP, true},
		{"GET / HTTP/1.1\r\n", protoHTTP, true},
		{"POST /x HTTP/1.0\r\n", protoHTTP, true},
		{"PROPPATCH /", protoHTTP, true},
		{"P", protoTCP, false},
		{"PRI * HTTP/2.0\r\n", protoTCP, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", protoH2, true},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", protoH2, true},
		{"PRI * HTTP/1.1\r\n", protoTCP, true},
		{"PRI * HTTP/2.0\r\n\r\nXX", protoTCP, true},
		{"get / HTTP/1.1", protoTCP, true}, // methods are case-sensitive
		{"GETX / HTTP/1.1", protoTCP, true},
		{"SET key value\r\n", protoTCP, true},
		{"\x16\x03\x01\x02\x00", protoTCP, true}, // TLS ClientHello
		{"\x00", protoTCP, true},
		{"PING\r\n", protoTCP, true},
	} {
		got, decided := classify([]byte(tc.in))
		if decided != tc.decided || (decided && got != tc.want) {
			t.Errorf("classify(%q) = %v, %v; want %v, %v", tc.in, got, decided, tc.want, tc.decided)
		}
	}
}

// slowReader hands out its bytes one per Read, then the error.
type slowReader struct {
	b   []byte
	err error
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, r.err
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func TestSniffKeepsEveryByteItRead(t *testing.T) {
	for _, tc := range []struct {
		in   string
		err  error
		want protocol
	}{
		{"GET / HTTP/1.1\r\n", io.EOF, protoHTTP},
		{"GE", io.EOF, protoTCP},                       // client shut its side early
		{"", io.EOF, protoTCP},                         // sent nothing at all
		{"POS", os.ErrDeadlineExceeded, protoTCP},      // then nothing within the timeout
		{"\x00\x01", os.ErrDeadlineExceeded, protoTCP}, // binary
	} {
		r := &slowReader{b: []byte(tc.in), err: tc.err}
		buf := make([]byte, 0, 512)
		got, err := sniffInto(r, &buf)
		if err != nil || got != tc.want {
			t.Errorf("sniff(%q then %v) = %v, %v; want %v", tc.in, tc.err, got, err, tc.want)
		}
		if replay := string(buf) + string(r.b); replay != tc.in {
			t.Errorf("sniff(%q): peeked %q + unread %q do not give the input back", tc.in, buf, r.b)
		}
	}
	buf := make([]byte, 0, 512)
	if _, err := sniffInto(&slowReader{b: []byte("GE"), err: io.ErrClosedPipe}, &buf); err == nil {
		t.Error("sniff with a read error gave no error")
	}
}

func TestSniffOnConnTimesOutToTCP(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	start := time.Now()
	got, peeked, err := sniff(server, 50*time.Millisecond)
	if err != nil || got != protoTCP || len(peeked) != 0 {
		t.Errorf("sniff of a silent client = %v, %q, %v; want tcp, nothing", got, peeked, err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("gave up after %v, before the timeout", d)
	}
	// The deadline is gone afterwards: a later read waits for data.
	go client.Write([]byte("late"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "late" {
		t.Errorf("read after sniff = %q, %v", b, err)
	}
}

// FuzzSniff checks that no input makes classification panic, that a
// decision never changes as more bytes arrive, and that it is reached
// within maxSniffLen bytes.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", "PRI * HTTP/2.0", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "\x16\x03\x01", "", "PROPPATCH ", "OPTIONS * HTTP/1.1", "G\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var first protocol
		decidedAt := -1
		for i := 0; i <= len(b); i++ {
			p, ok := classify(b[:i])
			if decidedAt < 0 {
				if ok {
					first, decidedAt = p, i
				} else if i > maxSniffLen {
					t.Fatalf("undecided after %d bytes of %q", i, b)
				}
				continue
			}
			if !ok || p != first {
				t.Fatalf("classify(%q) = %v, %v, but %q already gave %v", b[:i], p, ok, b[:decidedAt], first)
			}
		}
		buf := make([]byte, 0, 512)
		p, err := sniffInto(&slowReader{b: b, err: io.EOF}, &buf)
		if err != nil {
			t.Fatalf("sniff(%q): %v", b, err)
		}
		if decidedAt >= 0 && p != first {
			t.Fatalf("sniff(%q) = %v, classify said %v", b, p, first)
		}
		if !bytes.HasPrefix(b, buf) {
			t.Fatalf("sniff(%q) kept %q, not a prefix", b, buf)
		}
	})
}
