package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"

	mdns "github.com/miekg/dns"
)

// udpReadSize is the largest query the UDP listener reads; bigger datagrams
// are cut and answered FORMERR. Queries are far smaller in practice.
const udpReadSize = 4096

var errInvalidVIP = errors.New("services reported the service found but gave no valid VIP")

// Server answers mesh names and forwards all others. It is started once with
// Start and stopped with Shutdown; ServeDNS can also be driven directly.
type Server struct {
	cfg   Config
	zones []meshZone // longest suffix first
	names []string   // zones[i].suffix, for classifyName
	log   *slog.Logger

	// ctx lives as long as the server: LookupVIP gets it, and forwarding
	// in flight stops when Shutdown cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	replyBufs sync.Pool // *[]byte of maxMsgLen, for upstream replies
	waiters   sync.Pool // *waiter, for queries forwarded over UDP

	// udpUps are the shared UDP sockets to cfg.Upstreams, in the same
	// order; they live until Shutdown.
	udpUps []*udpUpstream
	// forwardLimit bounds the UDP queries forwarding at once
	// (maxForwardInflight; tests lower it).
	forwardLimit int
	// singleUDP makes the UDP loop read and write one datagram per call
	// even where it could batch (tests of the fallback set it).
	singleUDP bool
	// noGSO keeps the batch loop from coalescing replies with UDP GSO.
	noGSO bool

	mu      sync.Mutex
	started bool
	stopped bool
	udp     *udpServer
	tcp     *mdns.Server
}

// NewServer checks cfg, naming the field at fault, and fills in defaults.
func NewServer(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("new dns server: %w", err)
	}
	suffixes := append([]string(nil), cfg.Suffixes...)
	// Longest first, so that "service.consul" is tried before "consul".
	sort.SliceStable(suffixes, func(i, j int) bool { return len(suffixes[i]) > len(suffixes[j]) })
	s := &Server{cfg: cfg, names: suffixes, log: cfg.Logger, forwardLimit: maxForwardInflight}
	for _, sfx := range suffixes {
		s.zones = append(s.zones, newMeshZone(sfx, cfg.TTL))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.replyBufs.New = func() any {
		b := make([]byte, maxMsgLen)
		return &b
	}
	s.waiters.New = func() any {
		w := newWaiter()
		w.query = make([]byte, 0, 512)
		return w
	}
	for _, up := range cfg.Upstreams {
		s.udpUps = append(s.udpUps, newUDPUpstream(s.ctx, up, cfg.Dialer.DialContext))
	}
	return s, nil
}

// udpReadBuffer is the receive buffer asked for the DNS socket: about
// 4,000 small queries in the kernel's accounting.
const udpReadBuffer = 4 << 20

// Start binds UDP and TCP on cfg.Listen and returns once both serve.
// When cfg.Listen has port 0, TCP takes the port UDP got if it is free.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.stopped {
		return fmt.Errorf("starting dns server on %s: already started", s.cfg.Listen)
	}
	pc, err := net.ListenPacket("udp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("binding dns udp on %s: %w", s.cfg.Listen, err)
	}
	ln, err := listenTCPBeside(pc.LocalAddr(), s.cfg.Listen)
	if err != nil {
		_ = pc.Close()
		return err
	}
	tcp := &mdns.Server{Listener: ln, Handler: s}
	if err := s.activate(tcp, "tcp"); err != nil {
		_ = pc.Close()
		_ = ln.Close()
		return err
	}
	// A burst of queries (a resolver asking A and AAAA for every name of a
	// page at once) must wait in the socket while the loop catches up, not
	// be dropped: the kernel's default buffer holds about 90.
	if err := setReadBuffer(pc.(*net.UDPConn), udpReadBuffer); err != nil {
		s.log.Warn("cannot enlarge the dns socket's receive buffer; bursts of queries may be dropped", "error", err)
	}
	// Bound already, so it serves from here on.
	udp := newUDPServer(s, pc.(*net.UDPConn))
	go udp.serve()
	s.udp, s.tcp = udp, tcp
	s.started = true
	s.log.Info("dns server listening", "udp", pc.LocalAddr().String(), "tcp", ln.Addr().String(),
		"suffixes", s.names, "upstreams", s.cfg.Upstreams)
	return nil
}

// listenTCPBeside binds TCP on listen, or, when listen asks for any port,
// on the port UDP got so one address serves both, falling back to any
// port when another socket holds that one.
func listenTCPBeside(udpAddr net.Addr, listen string) (net.Listener, error) {
	want, err := netip.ParseAddrPort(listen)
	if err == nil && want.Port() == 0 {
		if u, ok := udpAddr.(*net.UDPAddr); ok {
			same := netip.AddrPortFrom(want.Addr(), uint16(u.Port)).String()
			if ln, err := net.Listen("tcp", same); err == nil {
				return ln, nil
			}
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("binding dns tcp on %s: %w", listen, err)
	}
	return ln, nil
}

// activate runs srv in the background and returns once it serves, or with
// the error that stopped it from serving.
func (s *Server) activate(srv *mdns.Server, network string) error {
	started := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	go func() {
		err := srv.ActivateAndServe()
		if err != nil {
			s.log.Error("dns server stopped serving", "network", network, "error", err)
		}
		failed <- err
	}()
	select {
	case <-started:
		return nil
	case err := <-failed:
		return fmt.Errorf("serving dns %s on %s: %w", network, s.cfg.Listen, err)
	}
}

// UDPAddr returns the address the UDP socket is bound to, nil before Start.
func (s *Server) UDPAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp == nil {
		return nil
	}
	return s.udp.conn.LocalAddr()
}

// TCPAddr returns the address the TCP socket is bound to, nil before Start.
func (s *Server) TCPAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Listener.Addr()
}

// Shutdown stops listening and waits for queries in flight until ctx ends;
// then it cancels whatever is still forwarding. It is safe to call more than
// once and before Start. The server cannot be started again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	udp, tcp := s.udp, s.tcp
	running := s.started && !s.stopped
	s.stopped = true
	s.mu.Unlock()
	// Last: cancel what still forwards, then close the shared sockets.
	defer s.closeUpstreams()
	defer s.cancel()
	if !running {
		return nil
	}
	// Both at once, so a slow TCP client does not eat the UDP side's time.
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = udp.shutdown(ctx) })
	wg.Go(func() { errs[1] = tcp.ShutdownContext(ctx) })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("shutting down dns server on %s: %w", s.cfg.Listen, err)
	}
	return nil
}

// closeUpstreams closes the shared upstream sockets; queries still waiting
// on them get SERVFAIL.
func (s *Server) closeUpstreams() {
	for _, up := range s.udpUps {
		up.close()
	}
}

// ServeDNS answers one query; it is the handler of the TCP listener, and
// the UDP loop takes the same path.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	kind, zone, service, ok := s.screen(w, r)
	if !ok {
		return
	}
	if kind == notMesh {
		if s.answerReverse(w, r) {
			return
		}
		s.forward(w, r)
		return
	}
	s.answerMesh(w, r, kind, zone, service, true)
}

// screen deals with what is not one plain question (answering or ignoring
// it, and then reporting false) and classifies the name of the rest.
func (s *Server) screen(w mdns.ResponseWriter, r *mdns.Msg) (kind nameKind, zone int, service string, ok bool) {
	if r.Response {
		// A reply sent to us is noise, and answering could loop.
		return 0, 0, "", false
	}
	if len(r.Question) != 1 {
		s.write(w, newReply(r, mdns.RcodeFormatError))
		return 0, 0, "", false
	}
	if r.Opcode != mdns.OpcodeQuery {
		s.write(w, newReply(r, mdns.RcodeNotImplemented))
		return 0, 0, "", false
	}
	kind, zone, service = classifyName(r.Question[0].Name, s.names)
	return kind, zone, service, true
}

// write sends m, logging at debug only: a client gone away is routine.
func (s *Server) write(w mdns.ResponseWriter, m *ownReply) { s.writeMsg(w, &m.msg) }

func (s *Server) writeMsg(w mdns.ResponseWriter, m *mdns.Msg) {
	if err := w.WriteMsg(m); err != nil && s.log.Enabled(s.ctx, slog.LevelDebug) {
		s.log.LogAttrs(s.ctx, slog.LevelDebug, "writing dns reply", slog.String("error", err.Error()))
	}
}
