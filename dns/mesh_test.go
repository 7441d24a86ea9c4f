package dns

import (
	"net"
	"testing"

	mdns "github.com/miekg/dns"
)

func TestMeshAnswers(t *testing.T) {
	services := newFakeServices()
	up := startUpstream(t, exampleUpstream)
	s := startServer(t, testConfig(services, up.addr))

	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		qclass    uint16
		rcode     int
		answer    string // the one answer record, "" for none
		soaZone   string // zone of the SOA expected in authority, "" for none
		askedWith string // service name Services must have been asked, "" to skip
	}{
		{name: "A of a service", qname: "web.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answer: "web.local.\t5\tIN\tA\t127.77.0.1", askedWith: "web"},
		{name: "client case kept, lower case asked", qname: "WEB.Local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answer: "WEB.Local.\t5\tIN\tA\t127.77.0.1", askedWith: "web"},
		{name: "second suffix", qname: "db.service.consul.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answer: "db.service.consul.\t5\tIN\tA\t127.77.0.2", askedWith: "db"},
		{name: "AAAA of a service is no data", qname: "web.local.", qtype: mdns.TypeAAAA,
			rcode: mdns.RcodeSuccess, soaZone: "local."},
		{name: "MX of a service is no data", qname: "web.service.consul.", qtype: mdns.TypeMX,
			rcode: mdns.RcodeSuccess, soaZone: "service.consul."},
		{name: "unknown service", qname: "nope.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeNameError, soaZone: "local.", askedWith: "nope"},
		{name: "AAAA of unknown service", qname: "nope.local.", qtype: mdns.TypeAAAA,
			rcode: mdns.RcodeNameError, soaZone: "local."},
		{name: "A of a tag subset", qname: "V2.web.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answer: "V2.web.local.\t5\tIN\tA\t127.77.0.3", askedWith: "v2.web"},
		{name: "subset under the second suffix", qname: "v2.web.service.consul.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answer: "v2.web.service.consul.\t5\tIN\tA\t127.77.0.3", askedWith: "v2.web"},
		{name: "tag no instance has", qname: "v9.web.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeNameError, soaZone: "local.", askedWith: "v9.web"},
		{name: "three labels", qname: "a.v2.web.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeNameError, soaZone: "local."},
		{name: "A of an SRV name is no data", qname: "_web._tcp.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, soaZone: "local.", askedWith: "web"},
		{name: "SRV name of unknown service", qname: "_nope._tcp.local.", qtype: mdns.TypeSRV,
			rcode: mdns.RcodeNameError, soaZone: "local.", askedWith: "nope"},
		{name: "lookup failing", qname: "broken.local.", qtype: mdns.TypeA,
			rcode: mdns.RcodeServerFailure},
		{name: "apex SOA", qname: "local.", qtype: mdns.TypeSOA,
			rcode: mdns.RcodeSuccess, answer: "local.\t5\tIN\tSOA\tns.dns.local. hostmaster.local. 1 3600 600 86400 5"},
		{name: "apex NS is no data", qname: "Service.Consul.", qtype: mdns.TypeNS,
			rcode: mdns.RcodeSuccess, soaZone: "service.consul."},
		{name: "class CH refused", qname: "web.local.", qtype: mdns.TypeA, qclass: mdns.ClassCHAOS,
			rcode: mdns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := question(tc.qname, tc.qtype)
			if tc.qclass != 0 {
				q.Question[0].Qclass = tc.qclass
			}
			r := ask(t, "udp", s.UDPAddr().String(), q)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tc.rcode])
			}
			switch {
			case tc.answer == "" && len(r.Answer) != 0:
				t.Errorf("answer %v, want none", r.Answer)
			case tc.answer != "" && (len(r.Answer) != 1 || r.Answer[0].String() != tc.answer):
				t.Errorf("answer %v, want [%s]", r.Answer, tc.answer)
			}
			if tc.soaZone == "" && len(r.Ns) != 0 {
				t.Errorf("authority %v, want none", r.Ns)
			}
			if tc.soaZone != "" {
				soa, ok := onlySOA(r.Ns)
				if !ok || soa.Hdr.Name != tc.soaZone || soa.Minttl != 5 || soa.Hdr.Ttl != 5 {
					t.Errorf("authority %v, want one SOA of %s with TTL and minimum 5", r.Ns, tc.soaZone)
				}
			}
			wantAA := tc.rcode == mdns.RcodeSuccess || tc.rcode == mdns.RcodeNameError
			if r.Authoritative != wantAA {
				t.Errorf("authoritative %v, want %v", r.Authoritative, wantAA)
			}
			if tc.askedWith != "" && services.lastAsked() != tc.askedWith {
				t.Errorf("Services asked for %q, want %q", services.lastAsked(), tc.askedWith)
			}
			if got := up.seen(); len(got) != 0 {
				t.Errorf("mesh name reached the upstream (%v)", got)
			}
		})
	}
}

func onlySOA(rrs []mdns.RR) (*mdns.SOA, bool) {
	if len(rrs) != 1 {
		return nil, false
	}
	soa, ok := rrs[0].(*mdns.SOA)
	return soa, ok
}

func TestMeshOverTCP(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	r := ask(t, "tcp", s.TCPAddr().String(), question("web.local.", mdns.TypeA))
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "127.77.0.1" {
		t.Fatalf("answer %v, want web.local. A 127.77.0.1", r.Answer)
	}
}

func TestMeshEDNS(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	for _, tc := range []struct {
		name  string
		qname string
		edns  bool
		do    bool
	}{
		{"no EDNS, no OPT", "web.local.", false, false},
		{"EDNS gets OPT", "web.local.", true, false},
		{"DO bit echoed", "web.local.", true, true},
		{"negative answer gets OPT", "nope.local.", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := question(tc.qname, mdns.TypeA)
			if tc.edns {
				q.SetEdns0(4096, tc.do)
			}
			r := ask(t, "udp", s.UDPAddr().String(), q)
			opt := r.IsEdns0()
			if (opt != nil) != tc.edns {
				t.Fatalf("OPT in answer: %v, want %v", opt != nil, tc.edns)
			}
			if opt != nil && opt.Do() != tc.do {
				t.Errorf("DO bit %v, want %v", opt.Do(), tc.do)
			}
		})
	}
}

func TestServeDNSRejects(t *testing.T) {
	s, err := NewServer(testConfig(newFakeServices(), "127.0.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	two := question("web.local.", mdns.TypeA)
	two.Question = append(two.Question, mdns.Question{Name: "db.local.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	none := question("web.local.", mdns.TypeA)
	none.Question = nil
	notify := question("web.local.", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeNotify

	for _, tc := range []struct {
		name  string
		q     *mdns.Msg
		rcode int
	}{
		{"two questions", two, mdns.RcodeFormatError},
		{"no question", none, mdns.RcodeFormatError},
		{"notify", notify, mdns.RcodeNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRecorder("udp")
			s.ServeDNS(w, tc.q)
			if w.msg == nil {
				t.Fatal("no reply written")
			}
			if w.msg.Rcode != tc.rcode || w.msg.Id != tc.q.Id || !w.msg.Response {
				t.Errorf("reply rcode %s id %d response %v, want %s id %d response",
					mdns.RcodeToString[w.msg.Rcode], w.msg.Id, w.msg.Response, mdns.RcodeToString[tc.rcode], tc.q.Id)
			}
		})
	}
}

func TestMultiQuestionOverUDP(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	q := question("web.local.", mdns.TypeA)
	q.Question = append(q.Question, mdns.Question{Name: "db.local.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	r := ask(t, "udp", s.UDPAddr().String(), q)
	if r.Rcode != mdns.RcodeFormatError {
		t.Fatalf("rcode %s, want FORMERR", mdns.RcodeToString[r.Rcode])
	}
}

func TestMalformedPacketsDoNotStopServer(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// A header claiming one question, followed by a name that runs off the end.
	badQuestion := []byte{0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, 'a', 'b'}
	garbage := [][]byte{
		{0x00},
		[]byte("definitely not dns"),
		make([]byte, 600), // larger than a minimal message, all zero: no question
		badQuestion,
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0, 0x0c},
	}
	for _, g := range garbage {
		if _, err := conn.Write(g); err != nil {
			t.Fatal(err)
		}
	}
	// The packet with a readable header gets FORMERR carrying its ID.
	_ = conn.SetReadDeadline(timeNowPlus(2000))
	raw, err := (&mdns.Conn{Conn: conn}).ReadMsgHeader(nil)
	if err != nil {
		t.Fatalf("reading reply to garbage: %v", err)
	}
	var sawFormErr bool
	for {
		var reply mdns.Msg
		if err := reply.Unpack(raw); err == nil && reply.Rcode == mdns.RcodeFormatError && reply.Id == 0xbeef {
			sawFormErr = true
		}
		_ = conn.SetReadDeadline(timeNowPlus(200))
		if raw, err = (&mdns.Conn{Conn: conn}).ReadMsgHeader(nil); err != nil {
			break
		}
	}
	if !sawFormErr {
		t.Error("no FORMERR for the packet with a broken question")
	}

	for _, network := range []string{"udp", "tcp"} {
		addr := s.UDPAddr().String()
		if network == "tcp" {
			addr = s.TCPAddr().String()
			sendTCPGarbage(t, addr)
		}
		r := ask(t, network, addr, question("web.local.", mdns.TypeA))
		if len(r.Answer) != 1 {
			t.Errorf("%s: after garbage, answer %v, want web.local. A", network, r.Answer)
		}
	}
}

// sendTCPGarbage writes a framed message that is not DNS and one whose frame
// claims more bytes than follow, then hangs up.
func sendTCPGarbage(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte{0, 5, 'h', 'e', 'l', 'l', 'o', 0xff, 0xff, 1, 2, 3})
}
