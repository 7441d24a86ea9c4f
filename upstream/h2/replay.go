package h2

import (
	"errors"
	"io"
	"sync"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

var errOtherAttempt = errors.New("the request body went on to another attempt")

// sentBody is the app's request body as the attempts of one request read
// it: the bytes read so far are kept, up to frontend.MaxReplayBody, so
// that the next attempt (ours on another instance, or the transport's own
// after a refused stream) sends them again before reading on. A stream
// stays a stream: nothing is read ahead of what an attempt asks for.
//
// Only the newest attempt reads; one left behind (the transport may read
// a body after RoundTrip returned) gets errOtherAttempt and takes no byte
// from the next.
type sentBody struct {
	src    io.ReadCloser
	readMu sync.Mutex // held across a read of src

	mu    sync.Mutex
	kept  []byte
	read  int  // bytes read from src
	lost  bool // read grew beyond what is kept
	err   error
	epoch int // of the newest attempt
}

func newSentBody(src io.ReadCloser) *sentBody {
	return &sentBody{src: src}
}

// total is how many bytes were read from the app.
func (b *sentBody) total() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(b.read)
}

// attempt returns the body of a new attempt; earlier ones stop reading.
func (b *sentBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.epoch++
	return &attemptReader{b: b, epoch: b.epoch}
}

// again is the request's GetBody: a new attempt, while the body read so
// far is whole.
func (b *sentBody) again() (io.ReadCloser, error) {
	if !b.replayable() {
		return nil, errors.New("the request body is too long to send again")
	}
	return b.attempt(), nil
}

// replayable reports whether a new attempt would send the whole body.
func (b *sentBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.lost && (b.err == nil || b.err == io.EOF)
}

type attemptReader struct {
	b     *sentBody
	epoch int
	pos   int
}

func (a *attemptReader) Read(p []byte) (int, error) {
	b := a.b
	for {
		b.mu.Lock()
		if a.epoch != b.epoch {
			b.mu.Unlock()
			return 0, errOtherAttempt
		}
		if a.pos < b.read {
			if b.lost {
				b.mu.Unlock()
				return 0, errOtherAttempt // no attempt starts once bytes are lost
			}
			n := copy(p, b.kept[a.pos:])
			a.pos += n
			b.mu.Unlock()
			return n, nil
		}
		if b.err != nil {
			b.mu.Unlock()
			return 0, b.err
		}
		b.mu.Unlock()

		b.readMu.Lock()
		b.mu.Lock()
		stale := a.epoch != b.epoch || a.pos < b.read
		b.mu.Unlock()
		if stale {
			b.readMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		b.mu.Lock()
		if !b.lost {
			if len(b.kept)+n <= frontend.MaxReplayBody {
				b.kept = append(b.kept, p[:n]...)
			} else {
				b.lost, b.kept = true, nil
			}
		}
		b.read += n
		a.pos += n
		if err != nil {
			b.err = err
		}
		b.mu.Unlock()
		b.readMu.Unlock()
		return n, err
	}
}

// Close leaves the app's body open: the next attempt may need it; the
// server closes it when the handler returns.
func (a *attemptReader) Close() error { return nil }
