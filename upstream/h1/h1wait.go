package h1

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The forwarder has one goroutine per app connection and waits with
// deadlines, so a wait on the instance cannot also watch the app. It waits
// in slices instead: when a slice passes, it looks at the other side
// without blocking (peek) and either goes on or stops. A slice that passes
// costs a system call; a request answered within one costs nothing more.

var (
	// errAppGone: the app closed or reset its connection while the
	// forwarder waited on the instance for it.
	errAppGone = errors.New("the app closed its connection")
	// errEarlyAnswer: the instance stopped reading the request body sent
	// to it, and answered or closed meanwhile.
	errEarlyAnswer = errors.New("the instance stopped reading the request body (it answered or closed)")
)

// peekState is what waits on a connection, seen without reading it.
type peekState uint8

const (
	peekEmpty peekState = iota // open, nothing waiting
	peekBytes                  // bytes are waiting
	peekGone                   // EOF or an error: the peer closed or reset it
)

// peeker looks at one connection without consuming or waiting. Its
// RawConn and the function it hands Control are made once, so that a look
// allocates nothing. A connection that is not a socket counts as open and
// empty.
type peeker struct {
	rc    syscall.RawConn // nil: not a socket
	fn    func(fd uintptr)
	buf   [1]byte
	state peekState
	// readNow's: where it reads, what it got, and its function for Control.
	dst   []byte
	n     int
	taker func(fd uintptr)
}

func (p *peeker) init(c net.Conn) {
	p.rc = nil
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			p.rc = rc
		}
	}
	p.fn = p.recv
	p.taker = p.take
}

func (p *peeker) take(fd uintptr) {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.dst[0])), uintptr(len(p.dst)),
		syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == syscall.EAGAIN:
		p.state = peekEmpty
	case errno == 0 && n > 0:
		p.n, p.state = int(n), peekBytes
	default:
		p.state = peekGone
	}
}

// readNow reads into b what is waiting, without waiting: n bytes, and
// peekBytes, or peekEmpty when nothing is, or peekGone at EOF or an error.
func (p *peeker) readNow(b []byte) (int, peekState) {
	if p.rc == nil || len(b) == 0 {
		return 0, peekEmpty
	}
	p.dst, p.n, p.state = b, 0, peekGone
	err := p.rc.Control(p.taker)
	p.dst = nil
	if err != nil {
		return 0, peekGone
	}
	return p.n, p.state
}

func (p *peeker) recv(fd uintptr) {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.buf[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == syscall.EAGAIN:
		p.state = peekEmpty
	case errno == 0 && n > 0:
		p.state = peekBytes
	default:
		p.state = peekGone
	}
}

func (p *peeker) peek() peekState {
	if p.rc == nil {
		return peekEmpty
	}
	p.state = peekGone
	// Control, not Read: it ignores the connection's deadlines, which may
	// have passed.
	if err := p.rc.Control(p.fn); err != nil {
		return peekGone
	}
	return p.state
}

// peek looks at c once (allocating: for waits that passed a slice).
func peek(c net.Conn) peekState {
	var p peeker
	p.init(c)
	return p.peek()
}

// appGone reports whether the app closed its connection or half-closed
// it (a FIN, even behind bytes it sent before, such as a pipelined
// request), or reset it. Allocating: for waits that passed a slice.
func appGone(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := true
	cerr := rc.Control(func(fd uintptr) {
		fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		if n, err := unix.Poll(fds[:], 0); err == nil {
			gone = n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
		} else {
			gone = false // EINTR: looked at again after the next slice
		}
	})
	return gone || cerr != nil
}

// alive reports whether an idle pooled connection can carry a request: it
// is open and nothing is waiting on it. Bytes an instance sent while no
// request was in flight would be taken for the next request's answer (net/
// http's transport closes such connections too). Under TLS it looks at the
// socket: a record that came while idle is a close_notify or another alert
// of a sidecar closing it, or bytes the instance should not have sent; a
// request sent there would be lost with the connection, and a POST is not
// sent again. The session tickets of TLS 1.3 come before the first answer
// (the server sends them once it has the client's Finished, before it
// reads a request) and were read with it.
func (c *upConn) alive() bool { return c.sock.peek() == peekEmpty }

// socketOf is the connection whose socket carries c: c itself, or, under
// the TLS of Mesh.Dial's mTLS connections, the TCP connection that
// NetConn hands out through the layers.
func socketOf(c net.Conn) net.Conn {
	for range 4 {
		if _, ok := c.(syscall.Conn); ok {
			return c
		}
		nc, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = nc.NetConn()
	}
	return c
}

// sliceEnd is the end of the slice of every that begins at now, or until
// when it comes first (zero until: none; zero every: no slices).
func sliceEnd(now time.Time, every time.Duration, until time.Time) time.Time {
	if every <= 0 {
		return until
	}
	end := now.Add(every)
	if !until.IsZero() && until.Before(end) {
		return until
	}
	return end
}

// readSlices is the wait of an instance connection's reads: up to until
// (zero: no end), in slices after each of which the app is looked at.
type readSlices struct {
	c     net.Conn // the instance connection
	app   net.Conn // nil: nothing to look at
	every time.Duration
	until time.Time
	armed *bool // cleared when it sets a deadline (see upConn.armSlice)
}

// again is given the error of a read. It returns nil when the read is to
// be made again (a slice passed and the app is still there), errAppGone
// when the app left, else err.
func (w *readSlices) again(err error) error {
	if w == nil || w.every <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	now := time.Now()
	if !w.until.IsZero() && !now.Before(w.until) {
		return err
	}
	// Bytes waiting from the app are its next request, or the rest of a
	// body the instance did not want; but a FIN behind them means it left
	// (or half-closed, which is taken as leaving, as nginx and net/http's
	// path do: a departed client never pins an instance).
	if w.app != nil && appGone(w.app) {
		return errAppGone
	}
	w.c.SetReadDeadline(sliceEnd(now, w.every, w.until))
	if w.armed != nil {
		*w.armed = false
	}
	return nil
}

// upWriter writes to an instance connection up to until, in slices after
// each of which it looks whether the instance answered instead of reading:
// an instance that answers a large upload before reading it, with more
// than the sockets hold, would otherwise wait on us while we wait on it.
type upWriter struct {
	c     net.Conn
	pk    *peeker     // of c
	rd    *connReader // c's reader, which gets what came early
	every time.Duration
	until time.Time
	bufs  *sync.Pool // of *[]byte, for ReadFrom
	armed *bool      // cleared when it sets a deadline (see upConn.armSlice)
}

func (w *upWriter) Write(p []byte) (int, error) {
	n := 0
	for {
		k, err := w.c.Write(p[n:])
		n += k
		if err == nil {
			return n, nil
		}
		if err = w.again(err); err != nil {
			return n, err
		}
	}
}

func (w *upWriter) again(err error) error {
	if w.every <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	now := time.Now()
	if !w.until.IsZero() && !now.Before(w.until) {
		return err
	}
	if w.pk.peek() != peekEmpty && w.answered() {
		return errEarlyAnswer
	}
	w.c.SetWriteDeadline(sliceEnd(now, w.every, w.until))
	if w.armed != nil {
		*w.armed = false
	}
	return nil
}

// answered reads, without waiting, what the instance sent into its reader
// (where the answer is read from later) and reports whether it answered
// instead of reading: a final head, an EOF or a reset. Interim heads
// (103 Early Hints, 102 Processing) alone are not: it may read the body
// after them. What it sent is held up to the answer head limit.
func (w *upWriter) answered() bool {
	rd := w.rd
	if rd == nil {
		return true
	}
	for {
		if !rd.makeRoom() {
			return true // more than a head may be: readHead refuses it
		}
		n, st := w.pk.readNow(rd.buf[rd.w:])
		rd.w += n
		switch st {
		case peekGone:
			return true
		case peekEmpty:
			return finalHeadIn(rd.buffered())
		}
	}
}

// finalHeadIn reports whether b, the start of an answer, holds more than
// whole or partial interim heads: the start of a final head (101
// included, which the caller refuses), or bytes that are no head at all,
// which readHead and parseResponseHead then judge.
func finalHeadIn(b []byte) bool {
	const interim = "HTTP/1.x 1"
	for len(b) > 0 {
		for i := 0; i < len(interim) && i < len(b); i++ {
			if b[i] != interim[i] && !(i == 7 && b[i] >= '0' && b[i] <= '9') {
				return true
			}
		}
		if len(b) >= 12 && string(b[9:12]) == "101" {
			return true
		}
		end := headEnd(b)
		if end < 0 {
			return false // an interim head, not whole yet
		}
		b = b[end:]
	}
	return false
}

// headEnd returns the length of the head at the start of b, up to and
// including its empty line, found as readHead finds it (a line of "\n" or
// "\r\n"); -1 when b holds no whole head yet.
func headEnd(b []byte) int {
	start := 0
	for {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return -1
		}
		end := start + i + 1
		if line := b[start:end]; len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			return end
		}
		start = end
	}
}

// ReadFrom copies a large request body through a buffer rather than by
// splicing: a splice that times out loses what it had taken from the app
// (the kernel pipe is dropped), so it could not go on after a slice. It
// says which side failed: reads fail as *srcFailed.
func (w *upWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := w.bufs.Get().(*[]byte)
	defer w.bufs.Put(bp)
	buf := *bp
	var n int64
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			wk, werr := w.Write(buf[:k])
			n += int64(wk)
			if werr != nil {
				return n, werr
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, &srcFailed{rerr}
		}
	}
}

// copyBufSize is the buffer of upWriter.ReadFrom: with 256 KiB a large
// upload goes about as fast as it did spliced (loopback, 16 MiB; 64 KiB
// was some 10% slower).
const copyBufSize = 256 << 10
