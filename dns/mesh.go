package dns

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	mdns "github.com/miekg/dns"
)

// ednsUDPSize is the UDP payload size we advertise in our own answers
// (the DNS flag day 2020 value, safe from fragmentation).
const ednsUDPSize = 1232

// meshZone is one mesh suffix with the SOA that negative answers carry.
type meshZone struct {
	suffix string // lower-case, no dots at the ends: "local"
	soa    mdns.SOA
}

func newMeshZone(suffix string, ttl uint32) meshZone {
	fqdn := suffix + "."
	return meshZone{
		suffix: suffix,
		soa: mdns.SOA{
			Hdr:     mdns.RR_Header{Name: fqdn, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
			Ns:      "ns.dns." + fqdn,
			Mbox:    "hostmaster." + fqdn,
			Serial:  1,
			Refresh: 3600,
			Retry:   600,
			Expire:  86400,
			// The minimum is the negative-caching TTL (RFC 2308): as short
			// as a positive answer, so a new service is seen quickly.
			Minttl: ttl,
		},
	}
}

// ownReply is an answer we build ourselves rather than forward. It holds
// the message, its slices and records in one allocation: the mesh path is
// the hot one (every app lookup of a service) and its answers are small and
// fixed in shape.
type ownReply struct {
	msg      mdns.Msg
	question [1]mdns.Question
	answer   [1]mdns.RR
	ns       [1]mdns.RR
	extra    [1]mdns.RR
	a        mdns.A
	aaaa     mdns.AAAA
	soa      mdns.SOA
	opt      mdns.OPT
	ip       [16]byte
}

// newReply starts a reply to r with rcode, echoing the first question and
// an OPT record when r had one.
func newReply(r *mdns.Msg, rcode int) *ownReply {
	m := new(ownReply)
	m.msg.Id = r.Id
	m.msg.Response = true
	m.msg.Opcode = r.Opcode
	m.msg.RecursionDesired = r.RecursionDesired
	m.msg.CheckingDisabled = r.CheckingDisabled
	m.msg.Rcode = rcode
	if len(r.Question) > 0 {
		m.question[0] = r.Question[0]
		m.msg.Question = m.question[:]
	}
	if opt := r.IsEdns0(); opt != nil {
		m.opt.Hdr = mdns.RR_Header{Name: ".", Rrtype: mdns.TypeOPT}
		m.opt.SetUDPSize(ednsUDPSize)
		m.opt.SetDo(opt.Do())
		m.extra[0] = &m.opt
		m.msg.Extra = m.extra[:]
	}
	return m
}

// withSOA puts the zone's SOA into the authority section.
func (m *ownReply) withSOA(z *meshZone) *ownReply {
	m.soa = z.soa
	m.ns[0] = &m.soa
	m.msg.Ns = m.ns[:]
	return m
}

// withSOAAnswer puts the zone's SOA into the answer section.
func (m *ownReply) withSOAAnswer(z *meshZone) *ownReply {
	m.soa = z.soa
	m.answer[0] = &m.soa
	m.msg.Answer = m.answer[:]
	return m
}

// answerMesh answers a question for a name under a mesh suffix.
// mayWait says whether it may wait for a name not known yet (off the UDP
// read loop).
func (s *Server) answerMesh(w mdns.ResponseWriter, r *mdns.Msg, kind nameKind, zone int, service string, mayWait bool) {
	q := r.Question[0]
	z := &s.zones[zone]
	if q.Qclass != mdns.ClassINET {
		s.cfg.Metrics.Query(QueryMesh)
		s.write(w, newReply(r, mdns.RcodeRefused))
		return
	}
	switch kind {
	case meshApex:
		s.cfg.Metrics.Query(QueryMesh)
		m := newReply(r, mdns.RcodeSuccess)
		m.msg.Authoritative = true
		if q.Qtype == mdns.TypeSOA {
			s.write(w, m.withSOAAnswer(z))
			return
		}
		s.write(w, m.withSOA(z))
		return
	case meshNoName:
		s.cfg.Metrics.Query(QueryNXDomain)
		m := newReply(r, mdns.RcodeNameError)
		m.msg.Authoritative = true
		s.write(w, m.withSOA(z))
		return
	}

	vip, found, err := s.lookupVIP(service, mayWait)
	if err == nil && found && !vip.IsValid() {
		err = errInvalidVIP
	}
	if err != nil {
		s.lookupFailed(w, r, service, err)
		return
	}
	if !found {
		s.cfg.Metrics.Query(QueryNXDomain)
		m := newReply(r, mdns.RcodeNameError)
		m.msg.Authoritative = true
		s.write(w, m.withSOA(z))
		return
	}
	if q.Qtype == mdns.TypeSRV {
		s.answerSRV(w, r, z, service, vip)
		return
	}
	s.cfg.Metrics.Query(QueryMesh)
	m := newReply(r, mdns.RcodeSuccess)
	m.msg.Authoritative = true
	// The RFC 2782 name (_web._tcp.local.) has SRV records only.
	if kind == meshSRVName || !m.addAddress(q, vip.Unmap(), s.cfg.TTL) {
		m.withSOA(z)
	}
	s.write(w, m)
}

// addAddress answers q with vip when the question asks for its family, and
// reports whether it did.
func (m *ownReply) addAddress(q mdns.Question, vip netip.Addr, ttl uint32) bool {
	hdr := mdns.RR_Header{Name: q.Name, Class: mdns.ClassINET, Ttl: ttl}
	switch {
	case q.Qtype == mdns.TypeA && vip.Is4():
		hdr.Rrtype = mdns.TypeA
		m.a.Hdr = hdr
		b := vip.As4()
		copy(m.ip[:], b[:])
		m.a.A = m.ip[:4]
		m.answer[0] = &m.a
	case q.Qtype == mdns.TypeAAAA && vip.Is6():
		hdr.Rrtype = mdns.TypeAAAA
		m.aaaa.Hdr = hdr
		m.ip = vip.As16()
		m.aaaa.AAAA = m.ip[:]
		m.answer[0] = &m.aaaa
	default:
		return false
	}
	m.msg.Answer = m.answer[:]
	return true
}

// lookupFailed answers SERVFAIL when the services could not tell.
func (s *Server) lookupFailed(w mdns.ResponseWriter, r *mdns.Msg, service string, err error) {
	if s.log.Enabled(s.ctx, slog.LevelDebug) {
		s.log.LogAttrs(s.ctx, slog.LevelDebug, "mesh lookup failed, answering SERVFAIL",
			slog.String("service", service), slog.String("error", err.Error()))
	}
	s.cfg.Metrics.Query(QueryServFail)
	s.write(w, newReply(r, mdns.RcodeServerFailure))
}

// lookupVIP asks Services for a name's VIP and, when the name is not known
// yet and the caller may wait, waits for it (at most ForwardTimeout, as
// long as a forwarded query may take) and asks again.
func (s *Server) lookupVIP(service string, mayWait bool) (netip.Addr, bool, error) {
	vip, found, err := s.cfg.Services.LookupVIP(s.ctx, service)
	if !mayWait || err == nil || !errors.Is(err, ErrNotKnownYet) {
		return vip, found, err
	}
	awaiter, ok := s.cfg.Services.(NameAwaiter)
	if !ok {
		return vip, found, err
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	defer cancel()
	if err := awaiter.AwaitName(ctx, service); err != nil {
		return netip.Addr{}, false, err
	}
	return s.cfg.Services.LookupVIP(s.ctx, service)
}

// notKnownYet reports whether answering a mesh name needs a wait for
// Consul (see lookupVIP): the UDP loop then answers it off the loop.
func (s *Server) notKnownYet(kind nameKind, service string) bool {
	if kind == notMesh || kind == meshApex || kind == meshNoName {
		return false
	}
	_, _, err := s.cfg.Services.LookupVIP(s.ctx, service)
	return err != nil && errors.Is(err, ErrNotKnownYet)
}
