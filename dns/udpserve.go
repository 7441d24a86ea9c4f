package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// maxForwardInflight bounds the UDP queries being forwarded at once. Beyond
// it a query is answered SERVFAIL at once, so that a flood of outside names
// costs a bounded number of goroutines and the stub retries later.
const maxForwardInflight = 1024

// udpServer reads queries from one UDP socket in a loop of its own. Mesh
// names are answered inline from a reused buffer; forwarded queries go to
// goroutines, at most maxForwardInflight at once. It replaces miekg/dns's
// UDP server, which starts a goroutine per packet and reads and writes
// with control messages; miekg/dns still parses and packs.
type udpServer struct {
	s    *Server
	conn *net.UDPConn
	fast *fastPath     // nil: every query takes the general path
	sem  chan struct{} // one token per query forwarding (or waiting for services)
	wg   sync.WaitGroup
	done chan struct{} // closed when the read loop has returned

	// bc writes batches on conn (nil in the one-datagram loop), v6 says
	// conn is an IPv6 socket; both are set before the loop reads, and the
	// upstream readers send forwarded replies with them.
	bc batchConn
	v6 bool

	// The read loop's forwarding state (udpforward.go): the socket this
	// batch's queries go out on, and the queries queued for it.
	cur      *sharedUDPConn
	sendQ    []queuedQuery
	sendMsgs []ipv4.Message
	sendBufs [][1][]byte
}

func newUDPServer(s *Server, conn *net.UDPConn) *udpServer {
	u := &udpServer{s: s, conn: conn, sem: make(chan struct{}, s.forwardLimit), done: make(chan struct{}),
		sendMsgs: make([]ipv4.Message, 0, udpBatchSize), sendBufs: make([][1][]byte, udpBatchSize)}
	fast, err := newFastPath(s.zones)
	if err != nil {
		// Zones are checked by NewServer, so this does not happen; the
		// general path answers everything then.
		s.log.Warn("dns udp fast path off", "error", err)
	} else {
		u.fast = fast
	}
	return u
}

// serve runs the read loop until the socket is closed: batched where the
// platform has recvmmsg/sendmmsg, one datagram per call where not.
func (u *udpServer) serve() {
	defer close(u.done)
	u.v6 = isIPv6Socket(u.conn)
	if bc := newBatchConn(u.conn); bc != nil && !u.s.singleUDP {
		u.bc = bc
		err := u.serveBatch(bc)
		if err == nil {
			return
		}
		// The first read failed: nothing was forwarded yet, so no
		// reader uses bc.
		u.bc = nil
		u.s.log.Info("serving dns udp one datagram at a time", "reason", err.Error())
	}
	u.serveSingle()
}

// serveSingle is the read loop without batching.
func (u *udpServer) serveSingle() {
	buf := make([]byte, udpReadSize)
	w := &udpWriter{conn: u.conn, out: make([]byte, 0, udpReadSize)}
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Errors of one datagram (e.g. an ICMP error queued on the
			// socket) must not stop the server.
			u.s.log.Debug("reading dns udp", "error", err)
			continue
		}
		w.to = from
		u.handle(w, buf[:n])
		u.flushSends()
	}
}

// handle answers one datagram as miekg/dns's server would: a header too
// short to read is dropped, and so is a response; what its default accept
// function rejects gets FORMERR (NOTIMP for opcodes other than QUERY and
// NOTIFY) and so does a message that does not unpack.
func (u *udpServer) handle(w *udpWriter, b []byte) {
	if len(b) < headerLen {
		return
	}
	if u.fast != nil && u.fast.answer(u.s, w, b) {
		return
	}
	hdr := mdns.Header{
		Id:      binary.BigEndian.Uint16(b),
		Bits:    binary.BigEndian.Uint16(b[2:]),
		Qdcount: binary.BigEndian.Uint16(b[4:]),
		Ancount: binary.BigEndian.Uint16(b[6:]),
		Nscount: binary.BigEndian.Uint16(b[8:]),
		Arcount: binary.BigEndian.Uint16(b[10:]),
	}
	switch action := mdns.DefaultMsgAcceptFunc(hdr); action {
	case mdns.MsgIgnore:
		return
	case mdns.MsgReject, mdns.MsgRejectNotImplemented:
		u.s.writeMsg(w, rejectReply(b, action))
		return
	}
	req := new(mdns.Msg)
	if err := req.Unpack(b); err != nil {
		if u.s.log.Enabled(u.s.ctx, slog.LevelDebug) {
			u.s.log.LogAttrs(u.s.ctx, slog.LevelDebug, "malformed dns query",
				slog.String("from", w.to.String()), slog.String("error", err.Error()))
		}
		req.SetRcodeFormatError(req)
		req.Zero = false
		req.Answer, req.Ns, req.Extra = nil, nil, nil
		u.s.writeMsg(w, req)
		return
	}
	kind, zone, service, ok := u.s.screen(w, req)
	if !ok {
		return
	}
	wait := waitsForServices(kind, &req.Question[0]) || u.s.notKnownYet(kind, service)
	if kind != notMesh && !wait {
		u.s.answerMesh(w, req, kind, zone, service, false)
		return
	}
	if kind == notMesh && u.s.answerReverse(w, req) {
		return
	}
	select {
	case u.sem <- struct{}{}:
	default:
		if u.s.log.Enabled(u.s.ctx, slog.LevelDebug) {
			u.s.log.LogAttrs(u.s.ctx, slog.LevelDebug, "too many queries forwarding, answering SERVFAIL",
				slog.String("name", req.Question[0].Name), slog.Int("inflight", cap(u.sem)))
		}
		u.s.cfg.Metrics.Query(QueryServFail)
		u.s.write(w, newReply(req, mdns.RcodeServerFailure))
		return
	}
	u.wg.Add(1)
	if !wait {
		u.forwardAsync(w, req)
		return
	}
	fw := &udpWriter{conn: u.conn, to: w.to}
	go func() {
		defer func() {
			<-u.sem
			u.wg.Done()
		}()
		u.s.answerMesh(fw, req, kind, zone, service, true)
	}()
}

// rejectReply is the answer to a header the accept function rejected,
// shaped as miekg/dns's server shapes it: the header echoed with QR set, no
// sections, and FORMERR or NOTIMP.
func rejectReply(b []byte, action mdns.MsgAcceptAction) *mdns.Msg {
	req := new(mdns.Msg)
	// The header alone unpacks into exactly the fields miekg/dns sets
	// from it; with nothing after it, no section is read.
	_ = req.Unpack(b[:headerLen])
	opcode := req.Opcode
	req.SetRcodeFormatError(req)
	req.Zero = false
	if action == mdns.MsgRejectNotImplemented {
		req.Opcode = opcode
		req.Rcode = mdns.RcodeNotImplemented
	}
	return req
}

// shutdown closes the socket and waits for the forwarding goroutines until
// ctx ends.
func (u *udpServer) shutdown(ctx context.Context) error {
	err := u.conn.Close()
	idle := make(chan struct{})
	go func() {
		<-u.done
		u.wg.Wait()
		close(idle)
	}()
	select {
	case <-idle:
	case <-ctx.Done():
		return fmt.Errorf("waiting for udp queries in flight: %w", ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("closing udp socket: %w", err)
	}
	return nil
}

// udpWriter is the ResponseWriter of one client of the UDP loop. The loop's
// own writers are reused from packet to packet, with their pack buffers;
// each forwarding goroutine gets one of its own.
//
// A batched writer (the batch loop's) does not send: it keeps the reply in
// reply for the loop to send with the rest of the batch. handle writes at
// most one reply per datagram; should a second come, the first is sent at
// once so that none is lost.
type udpWriter struct {
	conn    *net.UDPConn
	to      netip.AddrPort
	addr    *net.UDPAddr // to, as the batch read it; nil in the one-datagram loop
	out     []byte       // pack buffer, reused
	batched bool
	reply   []byte // the reply held for the batch; nil when none
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.to) }

func (w *udpWriter) WriteMsg(m *mdns.Msg) error {
	if err := w.flush(); err != nil {
		return err
	}
	b, err := m.PackBuffer(w.out[:cap(w.out)])
	if err != nil {
		return fmt.Errorf("packing reply: %w", err)
	}
	if cap(b) <= udpReadSize {
		w.out = b[:0]
	}
	return w.hold(b)
}

// Write sends b (a forwarded reply) as it is; a batched writer holds a
// copy for the batch.
func (w *udpWriter) Write(b []byte) (int, error) {
	if err := w.flush(); err != nil {
		return 0, err
	}
	if w.batched {
		// Copied: the caller may reuse b once Write returns.
		w.out = append(w.out[:0], b...)
		b = w.out
	}
	if err := w.hold(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// hold keeps b for the batch, or sends it when the writer is not batched.
func (w *udpWriter) hold(b []byte) error {
	if !w.batched {
		return w.send(b)
	}
	w.reply = b
	return nil
}

// flush sends the reply held for the batch, if any, before the pack
// buffer that holds it is reused.
func (w *udpWriter) flush() error {
	b := w.reply
	if b == nil {
		return nil
	}
	w.reply = nil
	return w.send(b)
}

// send writes b to the client at once.
func (w *udpWriter) send(b []byte) error {
	_, err := w.conn.WriteToUDPAddrPort(b, w.to)
	if err != nil {
		return fmt.Errorf("writing reply to %s: %w", w.to, err)
	}
	return nil
}

func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}
