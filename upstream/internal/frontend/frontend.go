// Package frontend holds what the protocol front-ends of upstream share
// without importing one another: the accounting of the app's connections
// for a draining shutdown (ConnSet, LiveConn), copy buffers, and the HTTP
// limits that the forwarder (upstream/h1) and the net/http fallback
// (upstream/httpfallback) must keep equal, since a connection can move
// from the one to the other between two requests.
package frontend

import (
	"sync"
	"time"
)

// MaxHeadSize is the largest request head either HTTP path reads.
const MaxHeadSize = 64 << 10

// MaxReplayBody is how much of a request body either HTTP path keeps so
// that the request can be sent again to another instance. A request whose
// body grew beyond it before its attempt failed is not retried.
const MaxReplayBody = 64 << 10

// AppIdleTimeout is how long an app's keep-alive connection may wait for
// its next request, on either HTTP path. The app's idle connections cost
// a goroutine each; an hour is long enough that no well-behaved client
// notices.
const AppIdleTimeout = time.Hour

// BufferPool hands out copy buffers of one size; it implements
// httputil.BufferPool.
type BufferPool struct{ pool sync.Pool }

// NewBufferPool returns a pool of buffers of size bytes.
func NewBufferPool(size int) *BufferPool {
	return &BufferPool{pool: sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

// Get returns a buffer.
func (p *BufferPool) Get() []byte { return *p.pool.Get().(*[]byte) }

// Put gives a buffer back.
func (p *BufferPool) Put(b []byte) { p.pool.Put(&b) }
