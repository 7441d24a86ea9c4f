package h1

import "runtime"

// yieldBeforeWait lets the other connections' goroutines run before this
// one reads what it has just asked for (the app's next request after an
// answer, the instance's answer after a request). Go's reads try first
// and wait on the poller only when they find nothing: read right away,
// the bytes are almost never there yet, so each such read is an empty
// system call (EAGAIN), a park on the poller and a wake-up by it. When
// other goroutines are runnable, which is when the proxy is busy, the
// bytes have usually come by the time they have run, and the read finds
// them at once: what an event loop gets from batching. When none are, it
// returns at once and costs a trip through the scheduler, far less than
// the empty read.
func yieldBeforeWait() { runtime.Gosched() }
