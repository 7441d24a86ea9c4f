package meshlab

import (
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/netlab"
)

// OutsideAddr is what the test resolver answers for every name under
// "example.": a documentation address that nothing ever connects to.
var OutsideAddr = netip.MustParseAddr("192.0.2.10")

// BigName is a name the test resolver answers with BigAnswers A records
// (192.0.2.1 onwards): about 1,000 bytes, more than a UDP answer without
// EDNS0 may hold (512), less than the usual EDNS0 size (1232). Over UDP
// the answer is cut to the client's size with TC set, as real servers do.
const (
	BigName    = "big.example."
	BigAnswers = 60
)

// TestResolver stands for the resolver the app had before meshlet: it
// answers A queries for names under "example." itself (it forwards nothing,
// so no test query leaves the lab) and NXDOMAIN for anything else, and
// counts the queries it saw per name.
type TestResolver struct {
	udp, tcp *dns.Server

	mu     sync.Mutex
	counts map[string]int
}

// StartTestResolver serves on port 53 of host, UDP and TCP.
func StartTestResolver(host *netlab.Host) (*TestResolver, error) {
	r := &TestResolver{counts: map[string]int{}}
	pc, err := host.ListenPacket("udp", ":53")
	if err != nil {
		return nil, err
	}
	ln, err := host.Listen("tcp", ":53")
	if err != nil {
		pc.Close()
		return nil, err
	}
	r.udp = &dns.Server{PacketConn: pc, Handler: r}
	r.tcp = &dns.Server{Listener: ln, Handler: r}
	go r.udp.ActivateAndServe()
	go r.tcp.ActivateAndServe()
	return r, nil
}

// ServeDNS implements dns.Handler.
func (r *TestResolver) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	name := strings.ToLower(q.Question[0].Name)
	r.mu.Lock()
	r.counts[name]++
	r.mu.Unlock()
	switch {
	case !strings.HasSuffix(name, ".example."):
		m.Rcode = dns.RcodeNameError
	case name == BigName && q.Question[0].Qtype == dns.TypeA:
		for i := range BigAnswers {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A:   net.IPv4(192, 0, 2, byte(1+i)),
			})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := dns.MinMsgSize
			if opt := q.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size)
		}
	case q.Question[0].Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A:   net.IP(OutsideAddr.AsSlice()),
		})
	}
	w.WriteMsg(m)
}

// Count returns how many queries for name (any case, with or without the
// final dot) the resolver has seen.
func (r *TestResolver) Count(name string) int {
	name = dns.Fqdn(strings.ToLower(name))
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[name]
}

// Close stops the resolver.
func (r *TestResolver) Close() {
	r.udp.Shutdown()
	r.tcp.Shutdown()
}
