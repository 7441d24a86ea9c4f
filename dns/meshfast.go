package dns

import (
	"encoding/binary"
	"errors"
	"log/slog"

	mdns "github.com/miekg/dns"
)

// The fast path answers the query every app lookup of a service sends (one
// question, NAME.SUFFIX. type A or AAAA (or any but SRV), class IN, at most an OPT with no
// options) straight from its bytes: no unpacking, no message, no
// allocation. Its replies are byte for byte those of the general path
// (answerMesh packed by miekg/dns without compression), which a fuzz
// target checks; anything else it leaves to the general path untouched.

// maxFastNames bounds the cache of service names the fast path hands to
// LookupVIP; when full it starts over.
const maxFastNames = 1024

// fastZone is a mesh zone as the fast path needs it, in wire format.
type fastZone struct {
	suffix []byte // "local" as 5 'l' 'o' 'c' 'a' 'l' 0, lower-case
	soa    []byte // the zone's SOA record, packed
}

// fastPath holds what the fast path precomputes. It belongs to the UDP
// read loop, the one goroutine that uses it.
type fastPath struct {
	zones []fastZone // as Server.zones
	names map[string]string
}

func newFastPath(zones []meshZone) (*fastPath, error) {
	f := &fastPath{names: make(map[string]string)}
	for i := range zones {
		z := &zones[i]
		suffix := make([]byte, 256)
		n, err := mdns.PackDomainName(z.suffix+".", suffix, 0, nil, false)
		if err != nil {
			return nil, err
		}
		soa := make([]byte, 512)
		m, err := mdns.PackRR(&z.soa, soa, 0, nil, false)
		if err != nil {
			return nil, err
		}
		f.zones = append(f.zones, fastZone{suffix: suffix[:n], soa: soa[:m]})
	}
	return f, nil
}

// fastQuery is what the fast path read from a query.
type fastQuery struct {
	id       uint16
	flags    byte   // RD and CD, where the reply carries them
	nameEnd  int    // offset just past the question name
	label    []byte // the service label, as sent
	zone     int
	qtype    uint16
	edns, do bool
}

// parse reads b as a query the fast path answers, or reports false.
func (f *fastPath) parse(b []byte) (q fastQuery, ok bool) {
	if len(b) <= headerLen || b[2]&0xF8 != 0 { // QR and opcode QUERY
		return q, false
	}
	counts := binary.BigEndian.Uint64(b[4:12]) // qd, an, ns, ar
	switch counts {
	case 1 << 48:
	case 1<<48 | 1:
		q.edns = true
	default:
		return q, false
	}
	q.id = binary.BigEndian.Uint16(b)
	q.flags = b[2] & 0x01 // RD
	if b[3]&0x10 != 0 {
		q.flags |= 0x02 // CD, marked here, placed in the reply's byte 3
	}
	// The first label is the service: letters, digits, '-', '_'.
	l := int(b[headerLen])
	if l == 0 || l > 63 || headerLen+1+l > len(b) {
		return q, false
	}
	q.label = b[headerLen+1 : headerLen+1+l]
	for _, c := range q.label {
		if !isServiceByte(c) {
			return q, false
		}
	}
	rest := headerLen + 1 + l
	q.zone = -1
	for i := range f.zones {
		if hasFoldedPrefix(b[rest:], f.zones[i].suffix) {
			q.zone = i
			break
		}
	}
	if q.zone < 0 {
		return q, false
	}
	q.nameEnd = rest + len(f.zones[q.zone].suffix)
	if q.nameEnd-headerLen > 255 { // miekg/dns refuses longer names
		return q, false
	}
	// A whole name that is itself a zone (suffixes "local" and
	// "web.local") is that zone's apex: the general path says so.
	for i := range f.zones {
		if equalFold(b[headerLen:q.nameEnd], f.zones[i].suffix) {
			return q, false
		}
	}
	if q.nameEnd+4 > len(b) || binary.BigEndian.Uint16(b[q.nameEnd+2:]) != mdns.ClassINET {
		return q, false
	}
	q.qtype = binary.BigEndian.Uint16(b[q.nameEnd:])
	if q.qtype == mdns.TypeSRV { // ports: the general path's (records.go)
		return q, false
	}
	end := q.nameEnd + 4
	if q.edns {
		// Root name, OPT, any payload size, flags; no options.
		const optLen = 1 + 2 + 2 + 4 + 2
		if end+optLen != len(b) || b[end] != 0 || binary.BigEndian.Uint16(b[end+1:]) != mdns.TypeOPT ||
			binary.BigEndian.Uint16(b[end+9:]) != 0 {
			return q, false
		}
		q.do = b[end+7]&0x80 != 0
		end += optLen
	}
	return q, end == len(b)
}

// answer answers b on w if the fast path can, and reports whether it did;
// when it did not, it has written nothing (and asked nothing but, for a
// name not known yet, LookupVIP).
func (f *fastPath) answer(s *Server, w *udpWriter, b []byte) bool {
	q, ok := f.parse(b)
	if !ok {
		return false
	}
	service, ok := f.names[string(q.label)] // no allocation on a hit
	if !ok {
		service = lowerASCII(string(q.label))
		if len(f.names) >= maxFastNames {
			clear(f.names)
		}
		f.names[string(q.label)] = service
	}
	z := &f.zones[q.zone]
	out := w.out[:0]
	vip, found, err := s.cfg.Services.LookupVIP(s.ctx, service)
	if err == nil && found && !vip.IsValid() {
		err = errInvalidVIP
	}
	if err != nil && errors.Is(err, ErrNotKnownYet) {
		return false // the general path waits for it, off the loop
	}
	vip = vip.Unmap()
	switch {
	case err != nil:
		if s.log.Enabled(s.ctx, slog.LevelDebug) {
			s.log.LogAttrs(s.ctx, slog.LevelDebug, "mesh lookup failed, answering SERVFAIL",
				slog.String("service", service), slog.String("error", err.Error()))
		}
		out = q.header(out, b, false, mdns.RcodeServerFailure, 0, 0)
		s.cfg.Metrics.Query(QueryServFail)
	case !found:
		out = q.header(out, b, true, mdns.RcodeNameError, 0, 1)
		out = append(out, z.soa...)
		s.cfg.Metrics.Query(QueryNXDomain)
	case q.qtype == mdns.TypeA && vip.Is4():
		out = q.header(out, b, true, mdns.RcodeSuccess, 1, 0)
		out = q.record(out, b, mdns.TypeA, s.cfg.TTL)
		a := vip.As4()
		out = append(out, 0, 4)
		out = append(out, a[:]...)
		s.cfg.Metrics.Query(QueryMesh)
	case q.qtype == mdns.TypeAAAA && vip.Is6():
		out = q.header(out, b, true, mdns.RcodeSuccess, 1, 0)
		out = q.record(out, b, mdns.TypeAAAA, s.cfg.TTL)
		a := vip.As16()
		out = append(out, 0, 16)
		out = append(out, a[:]...)
		s.cfg.Metrics.Query(QueryMesh)
	default:
		out = q.header(out, b, true, mdns.RcodeSuccess, 0, 1)
		out = append(out, z.soa...)
		s.cfg.Metrics.Query(QueryMesh)
	}
	if q.edns {
		var do byte
		if q.do {
			do = 0x80
		}
		out = append(out, 0, byte(mdns.TypeOPT>>8), byte(mdns.TypeOPT), byte(ednsUDPSize>>8), byte(ednsUDPSize&0xff),
			0, 0, do, 0, 0, 0)
	}
	if cap(out) <= udpReadSize {
		w.out = out[:0]
	}
	if err := w.hold(out); err != nil && s.log.Enabled(s.ctx, slog.LevelDebug) {
		s.log.LogAttrs(s.ctx, slog.LevelDebug, "writing dns reply", slog.String("error", err.Error()))
	}
	return true
}

// header appends the reply's header and its copy of the question.
func (q *fastQuery) header(out, b []byte, aa bool, rcode int, an, ns uint16) []byte {
	flags1 := byte(0x80) | q.flags&0x01 // QR, RD
	if aa {
		flags1 |= 0x04
	}
	flags2 := byte(rcode & 0x0F)
	if q.flags&0x02 != 0 {
		flags2 |= 0x10 // CD
	}
	var ar uint16
	if q.edns {
		ar = 1
	}
	out = append(out, byte(q.id>>8), byte(q.id), flags1, flags2, 0, 1,
		byte(an>>8), byte(an), byte(ns>>8), byte(ns), byte(ar>>8), byte(ar))
	return append(out, b[headerLen:q.nameEnd+4]...)
}

// record appends an answer's owner (the name as asked), type, class and
// TTL; the caller appends its data.
func (q *fastQuery) record(out, b []byte, rrtype uint16, ttl uint32) []byte {
	out = append(out, b[headerLen:q.nameEnd]...)
	return append(out, byte(rrtype>>8), byte(rrtype), 0, byte(mdns.ClassINET),
		byte(ttl>>24), byte(ttl>>16), byte(ttl>>8), byte(ttl))
}

// hasFoldedPrefix reports whether b starts with wire name p up to ASCII
// case. Label lengths (below 64) never fold, so the labels line up.
func hasFoldedPrefix(b, p []byte) bool {
	return len(b) >= len(p) && equalFold(b[:len(p)], p)
}

func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lowerByte(a[i]) != lowerByte(b[i]) {
			return false
		}
	}
	return true
}
