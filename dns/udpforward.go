package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The UDP loop forwards a query without a goroutine of its own: it
// registers the query on an upstream socket and sends it with the rest of
// its batch (one sendmmsg per socket and batch); the socket's reader, which
// reads replies in batches too, answers the client itself, and sends the
// replies of one read together. A timer per query fails it over to the
// next upstream. Per forwarded query that saves a goroutine, two context
// switches and, under load, most of its three system calls.
//
// Who owns a udpJob: while its waiter is registered on an upstream socket,
// nobody; whoever takes it off (the reader with a reply, a failure of the
// socket, the timer, a failed send) owns it, and then either registers it
// again on the next upstream or answers the client.

// udpJob is one query that the UDP loop forwards.
type udpJob struct {
	u    *udpServer
	req  *mdns.Msg
	to   *net.UDPAddr // the client
	w    waiter       // its registration; w.job points back here
	qbuf [256]byte    // where the query is packed when it fits
	next int          // index in Server.udpUps of the next upstream to try; the owner's

	mu       sync.Mutex // guards what follows, which the timer reads
	c        *sharedUDPConn
	qid      uint16
	deadline time.Time
	timer    *time.Timer
	finished bool
	errs     []error
}

// queuedQuery is a query the loop sends when its batch is done.
type queuedQuery struct {
	c     *sharedUDPConn
	w     *waiter
	qid   uint16
	query []byte // as registered; a failover sends a copy of its own
}

// forwardAsync forwards req, read from w's client, as a udpJob. The
// caller holds a token of u.sem and has added one to u.wg, which the job
// gives back when it has answered.
func (u *udpServer) forwardAsync(w *udpWriter, req *mdns.Msg) {
	s := u.s
	s.cfg.Metrics.Query(QueryForwarded)
	j := &udpJob{u: u, req: req, to: w.addr}
	if j.to == nil {
		j.to = net.UDPAddrFromAddrPort(w.to)
	}
	j.w.job = j
	q, err := req.PackBuffer(j.qbuf[:])
	if err != nil {
		s.log.Debug("packing query to forward", "name", req.Question[0].Name, "error", err)
		s.write(w, newReply(req, mdns.RcodeServerFailure))
		j.done()
		return
	}
	j.w.query = q
	if len(s.udpUps) == 0 {
		j.finish()
		return
	}
	j.next = 1
	c, err := u.batchSocket()
	if err == nil {
		var qid uint16
		if qid, err = c.register(&j.w); err == nil {
			j.arm(c, qid)
			u.sendQ = append(u.sendQ, queuedQuery{c: c, w: &j.w, qid: qid, query: q})
			return
		}
		err = fmt.Errorf("asking udp upstream %s from %s: %w", s.udpUps[0].addr, c.conn.LocalAddr(), err)
	}
	j.failed(err)
}

// batchSocket returns the socket to the first upstream that this batch's
// queries go out on: one per batch, taken in turn, so that the batch is
// one sendmmsg and the replies come back to one reader.
func (u *udpServer) batchSocket() (*sharedUDPConn, error) {
	if u.cur != nil && !u.cur.dead.Load() {
		return u.cur, nil
	}
	up := u.s.udpUps[0]
	c, err := up.conn(int(up.next.Add(1) % udpConnsPerUpstream))
	if err != nil {
		return nil, fmt.Errorf("asking udp upstream %s: %w", up.addr, err)
	}
	u.cur = c
	return c, nil
}

// flushSends sends the queries the batch queued, one sendmmsg per socket
// where it can.
func (u *udpServer) flushSends() {
	q := u.sendQ
	for len(q) > 0 {
		k := 1
		for k < len(q) && q[k].c == q[0].c {
			k++
		}
		u.sendQueued(q[0].c, q[:k])
		q = q[k:]
	}
	clear(u.sendQ)
	u.sendQ = u.sendQ[:0]
	u.cur = nil
}

func (u *udpServer) sendQueued(c *sharedUDPConn, q []queuedQuery) {
	if c.batch == nil || len(q) == 1 {
		for _, e := range q {
			if _, err := c.conn.Write(e.query); err != nil {
				u.sendFailed(e, err)
			}
		}
		return
	}
	if len(q) > len(u.sendBufs) {
		u.sendQueued(c, q[len(u.sendBufs):])
		q = q[:len(u.sendBufs)]
	}
	ms := u.sendMsgs[:0]
	for i, e := range q {
		u.sendBufs[i][0] = e.query
		ms = append(ms, ipv4.Message{Buffers: u.sendBufs[i][:]})
	}
	for len(ms) > 0 {
		n, err := c.batch.WriteBatch(ms, 0)
		if err != nil {
			// sendmmsg fails only for the first message.
			u.sendFailed(q[0], err)
			n = 1
		}
		if n <= 0 {
			n = 1 // never spin; what is left waits for its timer
		}
		ms, q = ms[n:], q[n:]
	}
	for i := range u.sendBufs {
		u.sendBufs[i][0] = nil
	}
}

// sendFailed fails a queued query over, as exchange does when its send
// fails, unless the reader has already taken it.
func (u *udpServer) sendFailed(e queuedQuery, err error) {
	if !e.c.forget(e.qid, e.w) {
		return
	}
	err = fmt.Errorf("sending: %w", err)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// The reader learns of a refusal too; anything else means the
		// socket is no use.
		e.c.fail(err, true)
	}
	e.w.job.failed(fmt.Errorf("asking udp upstream %s from %s: %w", e.c.conn.RemoteAddr(), e.c.conn.LocalAddr(), err))
}

// arm records where the job waits and starts its timer, unless it has
// been answered meanwhile.
func (j *udpJob) arm(c *sharedUDPConn, qid uint16) {
	timeout := j.u.s.cfg.ForwardTimeout
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.finished {
		return
	}
	j.c, j.qid = c, qid
	j.deadline = time.Now().Add(timeout)
	if j.timer == nil {
		j.timer = time.AfterFunc(timeout, j.timedOut)
	} else {
		j.timer.Reset(timeout)
	}
}

// timedOut fails the job over when it still waits where it waited when
// the timer was set. A timer that fires late, after the job has moved on,
// finds a later deadline or the job finished and does nothing.
func (j *udpJob) timedOut() {
	j.mu.Lock()
	c, qid, deadline, finished := j.c, j.qid, j.deadline, j.finished
	j.mu.Unlock()
	if finished || c == nil || time.Now().Before(deadline) {
		return
	}
	if c.forget(qid, &j.w) {
		j.failed(fmt.Errorf("asking udp upstream %s from %s: %w (%s)",
			c.conn.RemoteAddr(), c.conn.LocalAddr(), errTimeout, j.u.s.cfg.ForwardTimeout))
	}
}

// failed records why the try of one upstream ended (the job's owner calls
// it) and tries the next, or answers SERVFAIL when none is left or the
// server stops.
func (j *udpJob) failed(err error) {
	j.mu.Lock()
	if j.timer != nil {
		j.timer.Stop()
	}
	j.errs = append(j.errs, err)
	j.mu.Unlock()
	if isStop(err) {
		j.finish()
		return
	}
	j.tryNext()
}

// tryNext sends the query to the upstreams after the one that failed, one
// at a time, until one takes it; failover is rare, so it sends at once.
func (j *udpJob) tryNext() {
	s := j.u.s
	for j.next < len(s.udpUps) {
		up := s.udpUps[j.next]
		j.next++
		c, err := up.conn(int(up.next.Add(1) % udpConnsPerUpstream))
		if err != nil {
			if j.tryFailed(fmt.Errorf("asking udp upstream %s: %w", up.addr, err)) {
				break
			}
			continue
		}
		// A copy: the loop may still be sending the buffer it queued.
		j.w.query = append([]byte(nil), j.w.query...)
		qid, err := c.register(&j.w)
		if err != nil {
			if j.tryFailed(fmt.Errorf("asking udp upstream %s from %s: %w", up.addr, c.conn.LocalAddr(), err)) {
				break
			}
			continue
		}
		j.arm(c, qid)
		if _, err := c.conn.Write(j.w.query); err != nil {
			if !c.forget(qid, &j.w) {
				return // the reader (or a failure of the socket) has it
			}
			err = fmt.Errorf("sending: %w", err)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				c.fail(err, true)
			}
			if j.tryFailed(fmt.Errorf("asking udp upstream %s from %s: %w", up.addr, c.conn.LocalAddr(), err)) {
				break
			}
			continue
		}
		return
	}
	j.finish()
}

// tryFailed records err and reports whether no other upstream should be
// tried.
func (j *udpJob) tryFailed(err error) bool {
	j.mu.Lock()
	if j.timer != nil {
		j.timer.Stop()
	}
	j.errs = append(j.errs, err)
	j.mu.Unlock()
	return isStop(err)
}

// finish answers SERVFAIL: every upstream failed, or the server stops.
func (j *udpJob) finish() {
	j.mu.Lock()
	j.finished = true
	if j.timer != nil {
		j.timer.Stop()
	}
	errs := j.errs
	j.mu.Unlock()
	j.u.s.allFailed(&udpWriter{conn: j.u.conn, to: j.to.AddrPort()}, j.req, errs)
	j.done()
}

// replied stops the job's timer: the reader has its reply.
func (j *udpJob) replied() {
	j.mu.Lock()
	j.finished = true
	if j.timer != nil {
		j.timer.Stop()
	}
	j.mu.Unlock()
}

// done gives back the job's token and its count in the loop's wait group.
func (j *udpJob) done() {
	<-j.u.sem
	j.u.wg.Done()
}

// forwardOutbox gathers the forwarded replies that one read of an upstream
// socket brought, to send them to their clients in as few calls as it
// takes. It belongs to the socket's reader.
type forwardOutbox struct {
	u       *udpServer // whose clients the replies go to; nil when empty
	jobs    []*udpJob
	replies *replyGroups
}

func newForwardOutbox(n int) *forwardOutbox {
	return &forwardOutbox{replies: newReplyGroupsOf(gsoAvailable, n)}
}

// add answers j's client with msg (the upstream's reply, which add gives
// the client's ID): held for flush, which must come before msg's buffer is
// reused.
func (o *forwardOutbox) add(j *udpJob, msg []byte) {
	j.replied()
	binary.BigEndian.PutUint16(msg, j.req.Id)
	if o.u != j.u || o.replies.n == len(o.replies.groups) {
		o.flush()
	}
	o.u = j.u
	o.jobs = append(o.jobs, j)
	if j.u.bc == nil || (j.u.v6 && j.to.AddrPort().Addr().Is4In6()) {
		// No batch writer (the loop serves one datagram at a time), or a
		// v4-mapped client, which x/net would write as an IPv4 sockaddr
		// that an IPv6 socket refuses.
		w := udpWriter{conn: j.u.conn, to: j.to.AddrPort()}
		if err := w.send(msg); err != nil {
			j.u.s.log.Debug("writing forwarded reply", "name", j.req.Question[0].Name, "error", err)
		}
		return
	}
	if j.u.s.noGSO {
		o.replies.gso = false
	}
	o.replies.add(j.to, msg)
}

// flush sends what add held and releases the jobs.
func (o *forwardOutbox) flush() {
	if o.u == nil {
		return
	}
	if o.replies.n > 0 {
		o.u.writeBatch(o.u.bc, o.replies)
	}
	for i, j := range o.jobs {
		j.done()
		o.jobs[i] = nil
	}
	o.jobs = o.jobs[:0]
	o.u = nil
}

// Replies of upstreams are read this many at once, into slots of
// upstreamSlot bytes: the memory of the one 64 KiB read it replaces. A
// reply cut to its slot is asked for again and read whole (readBatches).
const (
	upstreamBatch = 16
	upstreamSlot  = maxMsgLen / upstreamBatch
)

// readBatches is readLoop with recvmmsg: it hands each reply of a read to
// its waiter, and sends the UDP loop's replies of that read together.
func (c *sharedUDPConn) readBatches() {
	ms := make([]ipv4.Message, upstreamBatch)
	bufs := make([]byte, upstreamBatch*upstreamSlot)
	for i := range ms {
		ms[i].Buffers = [][]byte{bufs[i*upstreamSlot : (i+1)*upstreamSlot : (i+1)*upstreamSlot]}
	}
	out := newForwardOutbox(upstreamBatch)
	var big []byte // for a while after a reply was cut: one whole datagram per read
	var bigUntil time.Time
	for {
		if big != nil && time.Now().Before(bigUntil) {
			n, err := c.conn.Read(big)
			if err != nil {
				if !c.readFailed(err) {
					return
				}
				continue
			}
			if w := c.deliver(big[:n]); w != nil {
				out.add(w.job, big[:n])
				out.flush()
			}
			continue
		}
		n, err := c.batch.ReadBatch(ms, 0)
		if err != nil {
			if !c.readFailed(err) {
				return
			}
			continue
		}
		for i := range ms[:n] {
			m := &ms[i]
			msg := m.Buffers[0][:m.N]
			if m.Flags&syscall.MSG_TRUNC != 0 {
				// Larger than a slot (an EDNS reply over 4 KiB): its head
				// still says whose it is. Ask again and read whole.
				if c.askAgain(msg) {
					if big == nil {
						big = make([]byte, maxMsgLen)
					}
					bigUntil = time.Now().Add(time.Second)
				}
				continue
			}
			if w := c.deliver(msg); w != nil {
				out.add(w.job, msg)
			}
		}
		out.flush()
	}
}

// askAgain sends again the query that the cut reply msg answers, if one
// waits for it, and reports whether it did.
func (c *sharedUDPConn) askAgain(msg []byte) bool {
	if len(msg) < headerLen || msg[2]&0x80 == 0 {
		return false
	}
	c.mu.Lock()
	w, ok := c.waiting[binary.BigEndian.Uint16(msg)]
	if !ok || !sameQuestion(w.query, msg) {
		c.mu.Unlock()
		return false
	}
	query := append([]byte(nil), w.query...)
	c.mu.Unlock()
	_, err := c.conn.Write(query)
	return err == nil
}
