package httpfallback

import (
	"errors"
	"io"
	"sync"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// maxReplayBody is how much of a request body is kept so that the request
// can be sent again to another instance, as on the forwarder's path.
const maxReplayBody = frontend.MaxReplayBody

var errBodyMoved = errors.New("request body moved on to another attempt")

// replayBody lets a request body outlive a failed attempt: the transport
// closes the body on every error, and may even read it after RoundTrip
// returned, while the next attempt needs it from the start. Each attempt
// reads through its own attemptBody; starting a new one detaches the old,
// so a straggling read of a failed attempt can no longer take bytes from
// the next. Bytes read from the app are recorded (up to maxReplayBody) in
// the order read, whoever read them, and every attempt sees them first.
type replayBody struct {
	src    io.ReadCloser
	readMu sync.Mutex // one read of src at a time

	mu       sync.Mutex
	buf      []byte // every byte read from src so far, unless overflow
	total    int    // bytes read from src
	overflow bool
	srcErr   error // sticky: the end (io.EOF) or failure of src
	cur      *attemptBody
}

// attempt returns the body for a new attempt and detaches the previous one.
func (b *replayBody) attempt() *attemptBody {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		b.cur.detached = true
	}
	b.cur = &attemptBody{b: b}
	return b.cur
}

// replayable reports whether a new attempt could send the whole body: all
// that was read of it is recorded, and reading it did not fail. A nil
// *replayBody (no body) is.
func (b *replayBody) replayable() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow && (b.srcErr == nil || b.srcErr == io.EOF)
}

// attemptBody is one attempt's reader of a replayBody.
type attemptBody struct {
	b        *replayBody
	pos      int  // guarded by b.mu
	detached bool // guarded by b.mu
}

func (a *attemptBody) Read(p []byte) (int, error) {
	b := a.b
	for {
		b.mu.Lock()
		switch {
		case a.detached:
			b.mu.Unlock()
			return 0, errBodyMoved
		case a.pos < b.total:
			if b.overflow {
				b.mu.Unlock()
				return 0, errBodyMoved // unreachable: no attempt starts after an overflow
			}
			n := copy(p, b.buf[a.pos:])
			a.pos += n
			b.mu.Unlock()
			return n, nil
		case b.srcErr != nil:
			b.mu.Unlock()
			return 0, b.srcErr
		}
		b.mu.Unlock()

		b.readMu.Lock()
		b.mu.Lock()
		behind := a.pos < b.total || a.detached // a straggler read meanwhile
		b.mu.Unlock()
		if behind {
			b.readMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		b.mu.Lock()
		if !b.overflow {
			if len(b.buf)+n <= maxReplayBody {
				b.buf = append(b.buf, p[:n]...)
			} else {
				b.overflow, b.buf = true, nil
			}
		}
		b.total += n
		a.pos += n
		if err != nil {
			b.srcErr = err
		}
		b.mu.Unlock()
		b.readMu.Unlock()
		return n, err
	}
}

// Close does nothing: the ReverseProxy closes the app's body when the
// handler returns, and a retry still needs it before that.
func (a *attemptBody) Close() error { return nil }
