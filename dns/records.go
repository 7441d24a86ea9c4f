package dns

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// SRV and PTR answers. Both are rare next to A and AAAA (an app that
// discovers ports, a tool that names an address), so they are built as
// ordinary miekg/dns messages on the general path.

// waitsForServices reports whether answering q may wait for the services
// (LookupPorts), so that the UDP loop hands it to a goroutine of its own.
func waitsForServices(kind nameKind, q *mdns.Question) bool {
	return (kind == meshService || kind == meshSRVName) && q.Qtype == mdns.TypeSRV && q.Qclass == mdns.ClassINET
}

// answerSRV answers an SRV question for a service (or subset) that
// exists, whose VIP is vip: one record per distinct port of its
// instances, all pointing at SERVICE.SUFFIX., whose address goes in the
// additional section. Any port works on a VIP (the intercept ignores it);
// the port is Consul's for clients that insist on the record's.
func (s *Server) answerSRV(w mdns.ResponseWriter, r *mdns.Msg, z *meshZone, service string, vip netip.Addr) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	defer cancel()
	ports, err := s.cfg.Services.LookupPorts(ctx, service)
	if err != nil {
		s.lookupFailed(w, r, service, err)
		return
	}
	s.cfg.Metrics.Query(QueryMesh)
	reply := newReply(r, mdns.RcodeSuccess)
	reply.msg.Authoritative = true
	if len(ports) == 0 {
		s.write(w, reply.withSOA(z))
		return
	}
	m := &reply.msg
	target := service + "." + z.suffix + "."
	m.Answer = make([]mdns.RR, 0, len(ports))
	for _, p := range ports {
		m.Answer = append(m.Answer, &mdns.SRV{
			Hdr:      mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: s.cfg.TTL},
			Priority: 1, Weight: 1, Port: p, Target: target,
		})
	}
	hdr := mdns.RR_Header{Name: target, Class: mdns.ClassINET, Ttl: s.cfg.TTL}
	var addr mdns.RR
	if vip = vip.Unmap(); vip.Is4() {
		hdr.Rrtype = mdns.TypeA
		addr = &mdns.A{Hdr: hdr, A: vip.AsSlice()}
	} else {
		hdr.Rrtype = mdns.TypeAAAA
		addr = &mdns.AAAA{Hdr: hdr, AAAA: vip.AsSlice()}
	}
	// The address before the OPT record, which stays last.
	m.Extra = append([]mdns.RR{addr}, m.Extra...)
	s.writeMsg(w, truncateForUDP(w, r, m))
}

// truncateForUDP cuts m to what the client can take over UDP (512 bytes,
// or its EDNS0 size), setting TC so that it asks again over TCP.
func truncateForUDP(w mdns.ResponseWriter, r *mdns.Msg, m *mdns.Msg) *mdns.Msg {
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		return m
	}
	size := mdns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		size = int(max(opt.UDPSize(), mdns.MinMsgSize))
	}
	m.Truncate(min(size, ednsUDPSize))
	return m
}

// reverseSuffix is the zone of IPv4 reverse names.
const reverseSuffix = ".in-addr.arpa."

// answerReverse answers a PTR question for a VIP's reverse name with the
// name it stands for and reports true; anything else it leaves alone
// (and reports false) to be forwarded.
func (s *Server) answerReverse(w mdns.ResponseWriter, r *mdns.Msg) bool {
	q := &r.Question[0]
	if q.Qtype != mdns.TypePTR || q.Qclass != mdns.ClassINET {
		return false
	}
	addr, ok := parseReverse(q.Name)
	if !ok {
		return false
	}
	name, found := s.cfg.Services.LookupName(s.ctx, addr)
	if !found {
		return false
	}
	s.cfg.Metrics.Query(QueryMesh)
	reply := newReply(r, mdns.RcodeSuccess)
	reply.msg.Authoritative = true
	reply.msg.Answer = []mdns.RR{&mdns.PTR{
		Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypePTR, Class: mdns.ClassINET, Ttl: s.cfg.TTL},
		Ptr: name + "." + s.cfg.Suffixes[0] + ".",
	}}
	s.write(w, reply)
	return true
}

// parseReverse reads "D.C.B.A.in-addr.arpa." (any case, final dot
// optional) as the address A.B.C.D.
func parseReverse(name string) (netip.Addr, bool) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	if len(name) <= len(reverseSuffix) || !strings.EqualFold(name[len(name)-len(reverseSuffix):], reverseSuffix) {
		return netip.Addr{}, false
	}
	labels := strings.Split(name[:len(name)-len(reverseSuffix)], ".")
	if len(labels) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, l := range labels {
		// Plain decimal only: no sign, no leading zeros, no escapes.
		if l == "" || len(l) > 3 || (len(l) > 1 && l[0] == '0') || strings.TrimLeft(l, "0123456789") != "" {
			return netip.Addr{}, false
		}
		n, err := strconv.Atoi(l)
		if err != nil || n > 255 {
			return netip.Addr{}, false
		}
		b[3-i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}
