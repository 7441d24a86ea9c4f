package dns

import (
	"errors"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// udpBatchSize is how many datagrams one recvmmsg reads and one sendmmsg
// writes at most. The read never waits for a batch to fill: it returns what
// the socket holds, and the replies to those go out before the next read.
// Each slot holds a read buffer of udpReadSize, so the batch costs 32 × 4 KiB.
const udpBatchSize = 32

// batchConn is what the batch loop needs of x/net's ipv4 and ipv6
// PacketConn (whose Message types are one and the same).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchConn wraps conn for recvmmsg/sendmmsg, or returns nil where
// batching is not worth it: off Linux, x/net reads and writes one message
// per call anyway, with more work than the plain loop.
func newBatchConn(conn *net.UDPConn) batchConn {
	if runtime.GOOS != "linux" {
		return nil
	}
	if isIPv6Socket(conn) {
		return ipv6.NewPacketConn(conn)
	}
	return ipv4.NewPacketConn(conn)
}

// isIPv6Socket reports whether conn is bound to an IPv6 address (the
// wildcard [::] included), whose socket may take IPv4 clients as
// v4-mapped addresses.
func isIPv6Socket(conn *net.UDPConn) bool {
	a, ok := conn.LocalAddr().(*net.UDPAddr)
	return ok && a.IP.To4() == nil
}

// serveBatch is the read loop with recvmmsg and sendmmsg: it reads what
// the socket holds (up to udpBatchSize datagrams), answers each as handle
// does, and writes the replies it has in one call. Forwarded queries still
// answer from their goroutines, one datagram each. It returns nil when the
// socket is closed, and errBatchUnsupported when the very first read
// fails (the kernel or the socket lacks recvmmsg, or x/net cannot wrap the
// socket): the caller then serves one datagram at a time.
func (u *udpServer) serveBatch(bc batchConn) error {
	v6 := u.v6
	in := make([]ipv4.Message, udpBatchSize)
	ws := make([]udpWriter, udpBatchSize) // the writer of each datagram's reply
	bufs := make([]byte, udpBatchSize*udpReadSize)
	for i := range in {
		in[i].Buffers = [][]byte{bufs[i*udpReadSize : (i+1)*udpReadSize : (i+1)*udpReadSize]}
		ws[i] = udpWriter{conn: u.conn, out: make([]byte, 0, 512), batched: true}
	}
	replies := newReplyGroups(gsoAvailable && !u.s.noGSO)
	for read := false; ; read = true {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !read {
				return fmt.Errorf("%w: %w", errBatchUnsupported, err)
			}
			// Errors of one datagram must not stop the server.
			u.s.log.Debug("reading dns udp batch", "error", err)
			continue
		}
		for i := range in[:n] {
			m, w := &in[i], &ws[i]
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			w.to, w.addr = from.AddrPort(), from
			w.reply = nil
			u.handle(w, m.Buffers[0][:m.N])
			if w.reply == nil {
				continue
			}
			// x/net writes a v4-mapped address as an IPv4 sockaddr,
			// which an IPv6 socket refuses; net does it right.
			if v6 && w.to.Addr().Is4In6() {
				if err := w.flush(); err != nil {
					u.s.log.Debug("writing dns udp reply", "error", err)
				}
				continue
			}
			replies.add(from, w.reply)
		}
		u.writeBatch(bc, replies)
		u.flushSends()
	}
}

// writeBatch sends the batch's replies with as few sendmmsg calls as it
// takes. A datagram the kernel refuses is logged and skipped, so that one
// bad destination does not cost the others their replies; a GSO send it
// refuses turns GSO off and goes again as single datagrams.
func (u *udpServer) writeBatch(bc batchConn, replies *replyGroups) {
	out := replies.messages()
	for len(out) > 0 {
		n, err := bc.WriteBatch(out, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if out[0].OOB != nil {
				if gsoRefused(err) {
					u.s.log.Info("dns udp: kernel refused GSO, sending datagrams one by one", "error", err)
					replies.gso = false
				}
				for _, b := range out[0].Buffers {
					one := []ipv4.Message{{Buffers: [][]byte{b}, Addr: out[0].Addr}}
					if _, err := bc.WriteBatch(one, 0); err != nil {
						u.s.log.Debug("writing dns udp reply", "to", out[0].Addr.String(), "error", err)
					}
				}
			} else {
				u.s.log.Debug("writing dns udp reply", "to", out[0].Addr.String(), "error", err)
			}
			n = 1 // sendmmsg fails only for the first message; skip it
		}
		if n <= 0 {
			return
		}
		out = out[n:]
	}
}

// replyGroups gathers the replies of one batch as the messages of one
// sendmmsg. With GSO, replies of the same length to the same client (a
// load generator's socket, a busy stub resolver) go as one message that
// the kernel cuts into datagrams: one trip through routing, netfilter and
// the loopback device instead of one per reply.
type replyGroups struct {
	gso    bool
	groups []replyGroup // the first n are in use
	n      int
	out    []ipv4.Message
}

type replyGroup struct {
	addr *net.UDPAddr
	size int
	bufs [][]byte
	oob  []byte
}

// gsoMaxBytes keeps a GSO send under the 64 KiB of one IP packet.
const gsoMaxBytes = 60000

func newReplyGroups(gso bool) *replyGroups { return newReplyGroupsOf(gso, udpBatchSize) }

// newReplyGroupsOf makes room for n replies.
func newReplyGroupsOf(gso bool, n int) *replyGroups {
	r := &replyGroups{gso: gso, groups: make([]replyGroup, n), out: make([]ipv4.Message, 0, n)}
	for i := range r.groups {
		r.groups[i].bufs = make([][]byte, 0, n)
		r.groups[i].oob = make([]byte, 0, 64)
	}
	return r
}

func (r *replyGroups) add(to *net.UDPAddr, b []byte) {
	if r.gso {
		for i := range r.groups[:r.n] {
			g := &r.groups[i]
			if g.size == len(b) && g.addr.Port == to.Port && g.addr.IP.Equal(to.IP) &&
				(len(g.bufs)+1)*len(b) <= gsoMaxBytes {
				g.bufs = append(g.bufs, b)
				return
			}
		}
	}
	g := &r.groups[r.n]
	r.n++
	g.addr, g.size, g.bufs = to, len(b), append(g.bufs[:0], b)
}

// messages returns the batch's messages and empties the groups.
func (r *replyGroups) messages() []ipv4.Message {
	r.out = r.out[:0]
	for i := range r.groups[:r.n] {
		g := &r.groups[i]
		m := ipv4.Message{Buffers: g.bufs, Addr: g.addr}
		if len(g.bufs) > 1 {
			g.oob = gsoControl(g.oob, g.size)
			m.OOB = g.oob
		}
		r.out = append(r.out, m)
	}
	r.n = 0
	return r.out
}

var errBatchUnsupported = errors.New("batched udp reads unavailable")
