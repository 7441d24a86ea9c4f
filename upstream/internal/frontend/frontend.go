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

// FramingLike reports whether a header name is a spelling of a framing
// header other than its own: one that, without its characters other than
// letters and digits and in lower case, is "contentlength" or
// "transferencoding" (Content_Length, transfer.encoding, ContentLength).
// Servers behind CGI-style environments (WSGI, PHP, Rack) map '_' and '-'
// to the same name, so a request with Transfer_Encoding beside our framing
// would be another request to them: a desync. Callers test the real names
// first; this is only reached for the others. Both HTTP paths refuse
// such a name in a request.
func FramingLike[T ~string | ~[]byte](name T) bool {
	return foldsTo(name, "contentlength") || foldsTo(name, "transferencoding")
}

// foldsTo reports whether the letters and digits of name, in lower case,
// are want. It stops at the first that differs, so most names cost a byte
// or two.
func foldsTo[T ~string | ~[]byte](name T, want string) bool {
	j := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) {
			continue
		}
		if j == len(want) || lower(c) != want[j] {
			return false
		}
		j++
	}
	return j == len(want)
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
