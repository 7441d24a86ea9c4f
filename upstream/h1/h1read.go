package h1

import (
	"bytes"
	"errors"
	"io"
	"net"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// Sizes of the forwarder's buffers. A request head must fit in
// maxHeadSize; the net/http path is held to the same limit
// (frontend.MaxHeadSize). Answer heads may be larger (net/http's
// transport allows 10 MB), but a head is held whole in memory for as long
// as its answer passes: 256 KiB is far more than real answers carry.
const (
	readBufSize     = 4 << 10
	writeBufSize    = 4 << 10
	maxHeadSize     = frontend.MaxHeadSize
	maxRespHeadSize = 256 << 10
	// maxLeadingEmptyLines is how many empty lines before a request line
	// are skipped (RFC 9112 2.2 allows a client's stray CRLF after a body).
	maxLeadingEmptyLines = 4
)

var (
	errHeadTooLarge = errors.New("head too large")
	errBareLF       = errors.New("line not ended by CRLF")
)

// connReader is the read buffer of one connection. Heads are read whole
// into it (and parsed in place); bodies pass through it. Unlike a
// bufio.Reader, every byte read and not consumed stays reachable, so a
// connection can be handed to the net/http path with them.
type connReader struct {
	c    net.Conn
	buf  []byte
	r, w int
	// limit is the largest head (zero: maxHeadSize); wait, if set, is how
	// reads wait (see readSlices).
	limit int
	wait  *readSlices
}

func (b *connReader) maxHead() int {
	if b.limit > 0 {
		return b.limit
	}
	return maxHeadSize
}

func (b *connReader) reset(c net.Conn, buf []byte) {
	b.c, b.buf, b.r, b.w = c, buf, 0, 0
}

func (b *connReader) buffered() []byte { return b.buf[b.r:b.w] }

func (b *connReader) discard(n int) { b.r += n }

// fill reads once more from the connection, making room first: it moves
// the unread bytes to the front, or doubles the buffer up to its limit.
func (b *connReader) fill() error {
	if !b.makeRoom() {
		return errHeadTooLarge
	}
	for empty := 0; empty < 100; {
		n, err := b.c.Read(b.buf[b.w:])
		b.w += n
		if n > 0 {
			return nil // an error comes again with the next read
		}
		if err != nil {
			if err = b.wait.again(err); err != nil {
				return err
			}
			continue
		}
		empty++
	}
	return io.ErrNoProgress
}

// makeRoom makes room after the unread bytes for more, and reports
// whether there is any: a head may not grow past maxHead.
func (b *connReader) makeRoom() bool {
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	if b.w == len(b.buf) {
		switch {
		case b.r > 0:
			b.w = copy(b.buf, b.buf[b.r:b.w])
			b.r = 0
		case len(b.buf) < b.maxHead():
			nb := make([]byte, min(2*len(b.buf), b.maxHead()))
			b.w = copy(nb, b.buf[b.r:b.w])
			b.r, b.buf = 0, nb
		default:
			return false
		}
	}
	return true
}

// readHead returns the next head, from its first line to its empty line
// included, and consumes it. Leading empty lines are skipped when skipEmpty.
// A connection that ends before the first byte of a head gives io.EOF;
// one that ends inside a head io.ErrUnexpectedEOF.
func (b *connReader) readHead(skipEmpty bool) ([]byte, error) {
	skipped := 0
	start, scan := 0, 0 // relative to b.r: where the line and the scan begin
	for {
		i := bytes.IndexByte(b.buf[b.r+scan:b.w], '\n')
		if i < 0 {
			scan = b.w - b.r
			if err := b.fill(); err != nil {
				if errors.Is(err, io.EOF) && b.r < b.w {
					return nil, io.ErrUnexpectedEOF
				}
				return nil, err
			}
			continue
		}
		end := scan + i + 1
		line := b.buf[b.r+start : b.r+end]
		empty := len(line) == 1 || (len(line) == 2 && line[0] == '\r')
		switch {
		case !empty:
			start, scan = end, end
		case start == 0 && skipEmpty && skipped < maxLeadingEmptyLines:
			skipped++
			b.r += end
			start, scan = 0, 0
		default:
			head := b.buf[b.r : b.r+end]
			b.r += end
			return head, nil
		}
	}
}

// readLine returns the next line, CRLF included, at most maxLen bytes.
func (b *connReader) readLine(maxLen int) ([]byte, error) {
	scan := 0
	for {
		if i := bytes.IndexByte(b.buf[b.r+scan:b.w], '\n'); i >= 0 {
			line := b.buf[b.r : b.r+scan+i+1]
			b.r += len(line)
			return line, nil
		}
		scan = b.w - b.r
		if scan >= maxLen {
			return nil, errors.New("line too long")
		}
		if err := b.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// take returns up to n buffered bytes, reading when none are, and
// consumes them.
func (b *connReader) take(n int64) ([]byte, error) {
	if b.r == b.w {
		if err := b.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	k := min(int64(b.w-b.r), n)
	p := b.buf[b.r : b.r+int(k)]
	b.r += int(k)
	return p, nil
}
