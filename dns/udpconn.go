package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxInflightPerConn bounds the queries waiting on one upstream socket. It
// keeps the ID space sparse (at most 1/64 taken), so that a random free ID
// is found in a try or two.
const maxInflightPerConn = 1024

var (
	errConnBusy    = errors.New("too many queries in flight on the upstream socket")
	errForwardStop = errors.New("dns server shutting down")
	errTimeout     = errors.New("no reply in time")
)

// sharedUDPConn is one long-lived connected UDP socket to an upstream that
// carries the forwarded queries of many clients at once. Each query gets an
// ID that no other query waiting on this socket has; one reader goroutine
// hands each reply to the query with its ID and question.
//
// Keeping the socket keeps its local port: the kernel never gives that port
// to the app, whose queries from it would otherwise match the conntrack
// entry of our marked (not redirected) socket and bypass the redirect.
type sharedUDPConn struct {
	conn net.Conn
	dead atomic.Bool // set once the socket failed or was closed

	// batch reads and writes several datagrams per call (recvmmsg,
	// sendmmsg); nil where the platform or the conn cannot.
	batch batchConn

	mu      sync.Mutex
	waiting map[uint16]*waiter
	err     error // why the socket is dead; guarded by mu
}

// waiter is one query waiting for its reply. Waiters are reused through
// a sync.Pool, with their channel and timer.
type waiter struct {
	query []byte // our packed query, carrying the ID we gave it
	buf   []byte // where the reader copies the reply
	done  chan waitResult
	timer *time.Timer
	// job, when set, is the UDP loop's query that waits without a
	// goroutine: the reader hands it the reply itself (udpforward.go), and
	// done, timer and buf are unused.
	job *udpJob
}

type waitResult struct {
	n   int
	err error
}

func newWaiter() *waiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{done: make(chan waitResult, 1), timer: t}
}

// newSharedUDPConn takes over conn (a connected UDP socket) and starts its
// reader.
func newSharedUDPConn(conn net.Conn) *sharedUDPConn {
	c := &sharedUDPConn{conn: conn, waiting: make(map[uint16]*waiter)}
	if uc, ok := conn.(*net.UDPConn); ok {
		c.batch = newBatchConn(uc)
	}
	go c.readLoop()
	return c
}

// exchange sends w.query (rewriting its ID) and waits for the reply, which
// the reader copies into w.buf. It gives up after timeout or when stop is
// closed. The reply carries our ID, not the client's.
func (c *sharedUDPConn) exchange(w *waiter, timeout time.Duration, stop <-chan struct{}) ([]byte, error) {
	id, err := c.register(w)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(w.query); err != nil {
		if c.forget(id, w) {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				// The reader learns of a refusal too; anything else
				// means the socket is no use.
				c.fail(fmt.Errorf("sending: %w", err), true)
			}
			return nil, fmt.Errorf("sending: %w", err)
		}
		// The reader finished with w while we were sending: it failed
		// us, or a matching reply (a late duplicate) came first.
		res := <-w.done
		if res.err != nil {
			return nil, res.err
		}
		return w.buf[:res.n], nil
	}
	w.timer.Reset(timeout)
	var why error
	select {
	case res := <-w.done:
		w.timer.Stop()
		if res.err != nil {
			return nil, res.err
		}
		return w.buf[:res.n], nil
	case <-w.timer.C:
		why = fmt.Errorf("%w (%s)", errTimeout, timeout)
	case <-stop:
		w.timer.Stop()
		why = errForwardStop
	}
	if c.forget(id, w) {
		return nil, why
	}
	// The reader handed us a result just before we took the lock.
	res := <-w.done
	if res.err != nil {
		return nil, res.err
	}
	return w.buf[:res.n], nil
}

// register gives w's query a random ID that no other waiter on this socket
// has, and enters w under it. Random, not sequential: a blind spoofer must
// guess it.
func (c *sharedUDPConn) register(w *waiter) (uint16, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(c.waiting) >= maxInflightPerConn {
		return 0, errConnBusy
	}
	for {
		id := uint16(rand.Uint32())
		if _, taken := c.waiting[id]; taken {
			continue
		}
		binary.BigEndian.PutUint16(w.query, id)
		c.waiting[id] = w
		return id, nil
	}
}

// forget removes w if it still waits under id, and reports whether it did.
// false means the reader has already sent w its result.
func (c *sharedUDPConn) forget(id uint16, w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting[id] != w {
		return false
	}
	delete(c.waiting, id)
	return true
}

// readLoop hands replies to their waiters until the socket fails or closes.
func (c *sharedUDPConn) readLoop() {
	if c.batch != nil {
		c.readBatches()
		return
	}
	buf := make([]byte, maxMsgLen)
	out := newForwardOutbox(1)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			if !c.readFailed(err) {
				return
			}
			continue
		}
		if w := c.deliver(buf[:n]); w != nil {
			out.add(w.job, buf[:n])
			out.flush()
		}
	}
}

// readFailed deals with an error of a read and reports whether the
// socket is still usable.
func (c *sharedUDPConn) readFailed(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		// ICMP port unreachable: nothing listens upstream now. Every
		// query waiting here was sent there, so let them all fail over at
		// once; the socket stays usable.
		c.fail(fmt.Errorf("reading: %w", err), false)
		return true
	}
	c.fail(fmt.Errorf("reading: %w", err), true)
	return false
}

// deliver hands msg to the waiter whose ID and question it carries. Anything
// else (a query, a late reply to a query that gave up, a reply to another
// question, a fragment) is dropped. A waiter of the UDP loop (one with a
// job) is returned instead, taken off the socket, for the caller to answer
// outside the lock while msg is still valid; otherwise deliver returns nil.
func (c *sharedUDPConn) deliver(msg []byte) *waiter {
	if len(msg) < headerLen || msg[2]&0x80 == 0 {
		return nil
	}
	id := binary.BigEndian.Uint16(msg)
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.waiting[id]
	if !ok || !sameQuestion(w.query, msg) {
		return nil
	}
	delete(c.waiting, id)
	if w.job != nil {
		return w
	}
	// Sent under the lock, so that forget either finds w or finds its
	// result already in the channel.
	w.done <- waitResult{n: copy(w.buf, msg)}
	return nil
}

// fail ends every query waiting on the socket with err; with dead it also
// closes the socket for good. The UDP loop's queries are failed over after
// the lock is released, since that may send on another socket.
func (c *sharedUDPConn) fail(err error, dead bool) {
	var jobs []*udpJob
	c.mu.Lock()
	if dead && c.err == nil {
		c.err = err
		c.dead.Store(true)
		_ = c.conn.Close()
	}
	for id, w := range c.waiting {
		delete(c.waiting, id)
		if w.job != nil {
			jobs = append(jobs, w.job)
			continue
		}
		w.done <- waitResult{err: err}
	}
	c.mu.Unlock()
	for _, j := range jobs {
		j.failed(err)
	}
}

// close closes the socket and fails its waiters with errForwardStop.
func (c *sharedUDPConn) close() { c.fail(errForwardStop, true) }

// inflight returns how many queries wait on the socket, for tests.
func (c *sharedUDPConn) inflight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}
