package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// srcFailed and dstFailed tell which side of a body copy failed: the one
// read (or its framing was bad) or the one written.
type (
	srcFailed struct{ err error }
	dstFailed struct{ err error }
)

func (e *srcFailed) Error() string { return e.err.Error() }
func (e *srcFailed) Unwrap() error { return e.err }
func (e *dstFailed) Error() string { return e.err.Error() }
func (e *dstFailed) Unwrap() error { return e.err }

// spliceMin is the least body left that is copied socket to socket (the
// kernel splices *net.TCPConn) rather than through the buffers.
const spliceMin = 64 << 10

// replayBuf records the request body bytes sent so far, so that another
// attempt can send them again; past frontend.MaxReplayBody it gives up.
type replayBuf struct {
	b        []byte
	overflow bool
}

func (r *replayBuf) reset() {
	if cap(r.b) > 16<<10 {
		r.b = nil // do not keep a big buffer for an idle connection
	}
	r.b, r.overflow = r.b[:0], false
}

func (r *replayBuf) add(p []byte) {
	if r == nil || r.overflow {
		return
	}
	if len(r.b)+len(p) > frontend.MaxReplayBody {
		r.overflow, r.b = true, r.b[:0]
		return
	}
	r.b = append(r.b, p...)
}

// recording reports whether bytes copied are still being recorded.
func (r *replayBuf) recording() bool { return r != nil && !r.overflow }

// Phases of a body copy.
const (
	phaseData      = iota // Content-Length bytes, or a chunk's data
	phaseChunkSize        // a chunk-size line
	phaseChunkEnd         // the CRLF after a chunk's data
	phaseTrailer          // trailer fields, up to the empty line
	phaseUntilEOF         // an answer delimited by the close of the connection, passed on in chunks
	phaseDone
)

// bodyCopy is the state of one body passing through, kept across calls so
// that a request body can go on where a failed attempt left it.
type bodyCopy struct {
	phase   int
	chunked bool
	// stream: bodies of unknown length are passed on as they come, each
	// piece flushed before waiting for the next (ReverseProxy flushes such
	// answers at once too, and the transport flushes each request chunk).
	stream bool
	left   int64    // phaseData: bytes left
	size   [18]byte // phaseUntilEOF: scratch for a chunk-size line
	n      int64    // payload bytes copied (framing not counted), for the access log
}

// start sets up the copy of a body framed by contentLength (-1: none),
// chunked or, if untilEOF, the close of the connection.
func (b *bodyCopy) start(contentLength int64, chunked, untilEOF bool) {
	*b = bodyCopy{chunked: chunked, stream: chunked || untilEOF}
	switch {
	case chunked:
		b.phase = phaseChunkSize
	case untilEOF:
		b.phase = phaseUntilEOF
	case contentLength > 0:
		b.phase, b.left = phaseData, contentLength
	default:
		b.phase = phaseDone
	}
}

func (b *bodyCopy) done() bool { return b.phase == phaseDone }

// copy moves the rest of the body from src to dst (dstConn is what dst
// writes to, for large copies: a *net.TCPConn splices) and records it in
// rec (nil: not recorded). Errors are *srcFailed or *dstFailed. dst is not
// flushed at the end. Reads wait as src.wait says.
func (b *bodyCopy) copy(dst *bufio.Writer, dstConn io.Writer, src *connReader, rec *replayBuf) error {
	for b.phase != phaseDone {
		if b.stream && dst.Buffered() > 0 && b.wouldWait(src) {
			if err := dst.Flush(); err != nil {
				return &dstFailed{err}
			}
		}
		switch b.phase {
		case phaseData:
			if len(src.buffered()) == 0 && b.left >= spliceMin && !rec.recording() {
				if err := dst.Flush(); err != nil {
					return &dstFailed{err}
				}
				n, err := io.Copy(dstConn, io.LimitReader(src.c, b.left))
				b.left -= n
				b.n += n
				if err != nil {
					if err = src.wait.again(err); err == nil {
						continue // a slice of the wait passed; nothing was lost
					}
					return bigCopyFailed(err, src)
				}
				if b.left > 0 {
					return &srcFailed{io.ErrUnexpectedEOF}
				}
			}
			for b.left > 0 {
				if b.stream && dst.Buffered() > 0 && len(src.buffered()) == 0 {
					if err := dst.Flush(); err != nil {
						return &dstFailed{err}
					}
				}
				p, err := src.take(b.left)
				if err != nil {
					return &srcFailed{err}
				}
				b.left -= int64(len(p))
				b.n += int64(len(p))
				rec.add(p)
				if _, err := dst.Write(p); err != nil {
					return &dstFailed{err}
				}
				if b.left >= spliceMin && !rec.recording() && len(src.buffered()) == 0 {
					break
				}
			}
			if b.left > 0 {
				continue // on to splicing
			}
			b.phase = phaseDone
			if b.chunked {
				b.phase = phaseChunkEnd
			}
		case phaseChunkSize:
			line, err := src.readLine(4 << 10)
			if err != nil {
				return &srcFailed{fmt.Errorf("reading a chunk size: %w", err)}
			}
			size, err := parseChunkSize(line)
			if err != nil {
				return &srcFailed{err}
			}
			if err := pass(dst, rec, line); err != nil {
				return err
			}
			if size == 0 {
				b.phase = phaseTrailer
			} else {
				b.phase, b.left = phaseData, size
			}
		case phaseChunkEnd:
			line, err := src.readLine(2)
			if err != nil || len(line) != 2 || line[0] != '\r' {
				return &srcFailed{errors.New("chunk data not followed by CRLF")}
			}
			if err := pass(dst, rec, line); err != nil {
				return err
			}
			b.phase = phaseChunkSize
		case phaseTrailer:
			line, err := src.readLine(maxHeadSize)
			if err != nil {
				return &srcFailed{fmt.Errorf("reading the trailer: %w", err)}
			}
			drop, err := checkTrailerLine(line)
			if err != nil {
				return &srcFailed{err}
			}
			if drop {
				continue
			}
			if err := pass(dst, rec, line); err != nil {
				return err
			}
			if len(line) == 2 {
				b.phase = phaseDone
			}
		case phaseUntilEOF:
			// Each read passes on as one chunk, and the last chunk only
			// when the instance closed cleanly: an answer it cuts short
			// (a reset, a timeout) then shows as cut to the app. Through
			// the buffers, not spliced: a splice cannot add the framing.
			if len(src.buffered()) == 0 {
				if err := src.fill(); err != nil {
					if !errors.Is(err, io.EOF) {
						return &srcFailed{err}
					}
					if _, err := dst.WriteString("0\r\n\r\n"); err != nil {
						return &dstFailed{err}
					}
					b.phase = phaseDone
					continue
				}
			}
			p := src.buffered()
			src.discard(len(p))
			b.n += int64(len(p))
			line := append(strconv.AppendInt(b.size[:0], int64(len(p)), 16), '\r', '\n')
			if _, err := dst.Write(line); err != nil {
				return &dstFailed{err}
			}
			if _, err := dst.Write(p); err != nil {
				return &dstFailed{err}
			}
			if _, err := dst.WriteString("\r\n"); err != nil {
				return &dstFailed{err}
			}
		}
	}
	return nil
}

// bigCopyFailed tells which side of a large copy failed. Through an
// upWriter (a request body: src has no wait) the error says it. A splice
// (an answer: src is the instance, dst the app) does not: the app is then
// looked at, and an error is the instance's only when the app is still
// there, so that an app that leaves never counts against an instance.
func bigCopyFailed(err error, src *connReader) error {
	var sf *srcFailed
	switch {
	case errors.As(err, &sf):
		return err
	case src.wait == nil:
		return &dstFailed{err}
	case errors.Is(err, errAppGone) || src.wait.app == nil || appGone(src.wait.app):
		return &dstFailed{err}
	}
	return &srcFailed{err}
}

// wouldWait reports whether the next step must read from the connection.
func (b *bodyCopy) wouldWait(src *connReader) bool {
	buf := src.buffered()
	if b.phase == phaseData || b.phase == phaseUntilEOF {
		return len(buf) == 0
	}
	return bytes.IndexByte(buf, '\n') < 0
}

func pass(dst *bufio.Writer, rec *replayBuf, p []byte) error {
	rec.add(p)
	if _, err := dst.Write(p); err != nil {
		return &dstFailed{err}
	}
	return nil
}

var errChunkSize = errors.New("malformed chunk size")

// parseChunkSize reads a chunk-size line: hex digits, optional chunk
// extensions, CRLF.
func parseChunkSize(line []byte) (int64, error) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, errChunkSize
	}
	line = line[:len(line)-2]
	var n int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, errChunkSize // over 2^60: nobody sends that
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, errChunkSize
	}
	rest := line[i:]
	if len(rest) > 0 {
		rest = trimOWS(rest)
		if len(rest) == 0 || rest[0] != ';' {
			return 0, errChunkSize
		}
		for _, c := range rest {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return 0, errChunkSize
			}
		}
	}
	return n, nil
}

// checkTrailerLine accepts a header field line or the final empty line,
// and says to drop a field named Content-Length or Transfer-Encoding, in
// any spelling: RFC 9110 forbids framing fields in trailers, and a server
// that merged trailers into headers would read a body of another length.
func checkTrailerLine(line []byte) (drop bool, err error) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return false, errBareLF
	}
	if len(line) == 2 {
		return false, nil
	}
	var h head
	h.reset()
	if err := parseFields(append(line[:len(line):len(line)], '\r', '\n'), &h, false); err != nil {
		return false, fmt.Errorf("malformed trailer: %w", err)
	}
	colon := bytes.IndexByte(line, ':')
	return frontend.FramingLike(line[:colon]), nil
}
