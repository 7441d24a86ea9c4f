package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	mdns "github.com/miekg/dns"
)

// headerLen is the size of a DNS message header.
const headerLen = 12

// maxMsgLen is the largest DNS message over TCP, and more than any UDP reply.
const maxMsgLen = 65535

// forward sends r to the upstreams in order over the transport it came in
// on and writes the first reply back byte for byte (but for the ID, which
// is the client's again), so rcode, records and the truncation bit (which
// sends the client to TCP) reach the client as the upstream made them. When
// every upstream fails the client gets SERVFAIL.
//
// UDP goes over long-lived sockets shared by all clients (see
// sharedUDPConn); TCP opens one connection per query.
func (s *Server) forward(w mdns.ResponseWriter, r *mdns.Msg) {
	s.cfg.Metrics.Query(QueryForwarded)
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		s.forwardTCP(w, r)
		return
	}
	wt := s.waiters.Get().(*waiter)
	defer s.waiters.Put(wt)
	query, err := r.PackBuffer(wt.query[:cap(wt.query)])
	if err != nil {
		s.log.Debug("packing query to forward", "name", r.Question[0].Name, "error", err)
		s.write(w, newReply(r, mdns.RcodeServerFailure))
		return
	}
	wt.query = query
	bufp := s.replyBufs.Get().(*[]byte)
	defer s.replyBufs.Put(bufp)
	wt.buf = *bufp
	defer func() { wt.buf = nil }()

	var errs []error
	for _, up := range s.udpUps {
		reply, err := up.exchange(wt, s.cfg.ForwardTimeout, s.ctx.Done())
		if err != nil {
			errs = append(errs, err)
			if isStop(err) {
				break
			}
			continue
		}
		binary.BigEndian.PutUint16(reply, r.Id)
		if _, err := w.Write(reply); err != nil {
			s.log.Debug("writing forwarded reply", "name", r.Question[0].Name, "error", err)
		}
		return
	}
	s.allFailed(w, r, errs)
}

// allFailed answers SERVFAIL when no upstream gave a reply.
func (s *Server) allFailed(w mdns.ResponseWriter, r *mdns.Msg, errs []error) {
	s.cfg.Metrics.ForwardFailed()
	s.log.Debug("all upstreams failed, answering SERVFAIL",
		"name", r.Question[0].Name, "error", errors.Join(errs...))
	s.write(w, newReply(r, mdns.RcodeServerFailure))
}

// forwardTCP is forward over TCP, one connection per query and upstream.
func (s *Server) forwardTCP(w mdns.ResponseWriter, r *mdns.Msg) {
	query, err := r.Pack()
	if err != nil {
		s.log.Debug("packing query to forward", "name", r.Question[0].Name, "error", err)
		s.write(w, newReply(r, mdns.RcodeServerFailure))
		return
	}
	bufp := s.replyBufs.Get().(*[]byte)
	defer s.replyBufs.Put(bufp)

	var errs []error
	for _, upstream := range s.cfg.Upstreams {
		reply, err := s.exchangeTCP(s.ctx, upstream, query, *bufp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := w.Write(reply); err != nil {
			s.log.Debug("writing forwarded reply", "name", r.Question[0].Name, "error", err)
		}
		return
	}
	s.allFailed(w, r, errs)
}

// exchangeTCP sends query to one upstream over a TCP connection of its
// own and returns its reply, read into buf. It gives up after
// cfg.ForwardTimeout or when ctx ends.
func (s *Server) exchangeTCP(ctx context.Context, upstream string, query, buf []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ForwardTimeout)
	defer cancel()
	conn, err := s.cfg.Dialer.DialContext(ctx, "tcp", upstream)
	if err != nil {
		return nil, fmt.Errorf("dialing tcp upstream %s: %w", upstream, err)
	}
	defer conn.Close()
	// One mechanism for both the per-try timeout and shutdown: whatever
	// ends ctx unblocks the read or write under way.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	reply, err := roundTripTCP(conn, query, buf, binary.BigEndian.Uint16(query))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, fmt.Errorf("asking tcp upstream %s: %w", upstream, err)
	}
	return reply, nil
}

// roundTripTCP writes query with its length prefix and reads one reply.
func roundTripTCP(conn net.Conn, query, buf []byte, id uint16) ([]byte, error) {
	if len(query) > maxMsgLen {
		return nil, fmt.Errorf("query of %d bytes does not fit a TCP frame", len(query))
	}
	framed := make([]byte, 2+len(query))
	binary.BigEndian.PutUint16(framed, uint16(len(query)))
	copy(framed[2:], query)
	if _, err := conn.Write(framed); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(conn, buf[:2]); err != nil {
		return nil, fmt.Errorf("reading reply length: %w", err)
	}
	n := int(binary.BigEndian.Uint16(buf[:2]))
	if _, err := io.ReadFull(conn, buf[:n]); err != nil {
		return nil, fmt.Errorf("reading %d-byte reply: %w", n, err)
	}
	if !isReplyTo(buf[:n], id) {
		return nil, errors.New("reply is not a response to the query (ID or QR bit differ)")
	}
	return buf[:n], nil
}

// isReplyTo reports whether msg has a whole header, the QR bit and id.
func isReplyTo(msg []byte, id uint16) bool {
	return len(msg) >= headerLen && binary.BigEndian.Uint16(msg) == id && msg[2]&0x80 != 0
}
