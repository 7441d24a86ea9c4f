package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

func TestSRVAnswers(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	tests := []struct {
		qname  string
		rcode  int
		answer []string // SRV records as text, in order
		extra  string   // the address record in the additional section
	}{
		{"web.local.", mdns.RcodeSuccess,
			[]string{"web.local.\t5\tIN\tSRV\t1 1 8080 web.local."}, "web.local.\t5\tIN\tA\t127.77.0.1"},
		{"_web._tcp.local.", mdns.RcodeSuccess,
			[]string{"_web._tcp.local.\t5\tIN\tSRV\t1 1 8080 web.local."}, "web.local.\t5\tIN\tA\t127.77.0.1"},
		{"_DB._tcp.Service.Consul.", mdns.RcodeSuccess,
			[]string{"_DB._tcp.Service.Consul.\t5\tIN\tSRV\t1 1 5432 db.service.consul."}, "db.service.consul.\t5\tIN\tA\t127.77.0.2"},
		{"v2.web.local.", mdns.RcodeSuccess, []string{
			"v2.web.local.\t5\tIN\tSRV\t1 1 8080 v2.web.local.",
			"v2.web.local.\t5\tIN\tSRV\t1 1 9090 v2.web.local.",
		}, "v2.web.local.\t5\tIN\tA\t127.77.0.3"},
		{"_web._v2.local.", mdns.RcodeSuccess, []string{
			"_web._v2.local.\t5\tIN\tSRV\t1 1 8080 v2.web.local.",
			"_web._v2.local.\t5\tIN\tSRV\t1 1 9090 v2.web.local.",
		}, "v2.web.local.\t5\tIN\tA\t127.77.0.3"},
		{"noports.local.", mdns.RcodeSuccess, nil, ""},
		{"nope.local.", mdns.RcodeNameError, nil, ""},
		{"_web._v9.local.", mdns.RcodeNameError, nil, ""},
		{"brokenpt.local.", mdns.RcodeServerFailure, nil, ""},
		{"broken.local.", mdns.RcodeServerFailure, nil, ""},
	}
	for _, network := range []string{"udp", "tcp"} {
		addr := s.UDPAddr().String()
		if network == "tcp" {
			addr = s.TCPAddr().String()
		}
		for _, tc := range tests {
			t.Run(network+" "+tc.qname, func(t *testing.T) {
				r := ask(t, network, addr, question(tc.qname, mdns.TypeSRV))
				if r.Rcode != tc.rcode {
					t.Fatalf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tc.rcode])
				}
				var got []string
				for _, rr := range r.Answer {
					got = append(got, rr.String())
				}
				if !slices.Equal(got, tc.answer) {
					t.Errorf("answer\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.answer, "\n"))
				}
				switch {
				case tc.extra == "" && len(r.Extra) != 0:
					t.Errorf("additional %v, want none", r.Extra)
				case tc.extra != "" && (len(r.Extra) != 1 || r.Extra[0].String() != tc.extra):
					t.Errorf("additional %v, want [%s]", r.Extra, tc.extra)
				}
				if len(tc.answer) == 0 && tc.rcode != mdns.RcodeServerFailure {
					if soa, ok := onlySOA(r.Ns); !ok || soa.Minttl != 5 {
						t.Errorf("authority %v, want the zone's SOA (negative TTL 5)", r.Ns)
					}
				}
			})
		}
	}
}

// TestSRVKeepsOPTLast checks that with EDNS the address goes before the
// OPT record, which a resolver expects last.
func TestSRVKeepsOPTLast(t *testing.T) {
	s := startServer(t, testConfig(newFakeServices(), deadAddr(t)))
	q := question("web.local.", mdns.TypeSRV)
	q.SetEdns0(1232, false)
	r := ask(t, "udp", s.UDPAddr().String(), q)
	if len(r.Answer) != 1 || len(r.Extra) != 2 || r.Extra[0].Header().Rrtype != mdns.TypeA || r.IsEdns0() == nil {
		t.Fatalf("answer %v additional %v, want one SRV, then A and OPT", r.Answer, r.Extra)
	}
}

func TestSRVTruncatedOverUDP(t *testing.T) {
	f := newFakeServices()
	f.ports["web"] = nil
	for p := range 100 {
		f.ports["web"] = append(f.ports["web"], uint16(10000+p))
	}
	s := startServer(t, testConfig(f, deadAddr(t)))
	r := ask(t, "udp", s.UDPAddr().String(), question("web.local.", mdns.TypeSRV))
	r.Compress = true // as it came
	if !r.Truncated || r.Len() > 512 {
		t.Fatalf("udp answer of %d bytes, truncated %v; want TC within 512 bytes", r.Len(), r.Truncated)
	}
	r = ask(t, "tcp", s.TCPAddr().String(), question("web.local.", mdns.TypeSRV))
	if r.Truncated || len(r.Answer) != 100 {
		t.Fatalf("tcp answer of %d records, truncated %v; want all 100", len(r.Answer), r.Truncated)
	}
}

func TestPTRAnswers(t *testing.T) {
	up := startUpstream(t, exampleUpstream)
	cfg := testConfig(newFakeServices(), up.addr)
	cfg.Suffixes = []string{"service.consul", "local"} // the first names VIPs
	s := startServer(t, cfg)
	for _, network := range []string{"udp", "tcp"} {
		addr := s.UDPAddr().String()
		if network == "tcp" {
			addr = s.TCPAddr().String()
		}
		for _, tc := range []struct{ qname, answer string }{
			{"1.0.77.127.in-addr.arpa.", "1.0.77.127.in-addr.arpa.\t5\tIN\tPTR\tweb.service.consul."},
			{"3.0.77.127.IN-ADDR.ARPA.", "3.0.77.127.IN-ADDR.ARPA.\t5\tIN\tPTR\tv2.web.service.consul."},
		} {
			r := ask(t, network, addr, question(tc.qname, mdns.TypePTR))
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].String() != tc.answer || !r.Authoritative {
				t.Errorf("%s PTR %s: %v %v, want %s", network, tc.qname, mdns.RcodeToString[r.Rcode], r.Answer, tc.answer)
			}
		}
	}
	if got := up.seen(); len(got) != 0 {
		t.Fatalf("a VIP's reverse name reached the upstream (%v)", got)
	}
	// Not a VIP, or not a PTR question: forwarded as any name.
	for _, q := range []*mdns.Msg{
		question("9.9.77.127.in-addr.arpa.", mdns.TypePTR),
		question("1.0.77.127.in-addr.arpa.", mdns.TypeA),
		question("1.2.0.192.in-addr.arpa.", mdns.TypePTR),
	} {
		r := ask(t, "udp", s.UDPAddr().String(), q)
		if r.Rcode != mdns.RcodeNameError {
			t.Errorf("%s: %s, want the upstream's NXDOMAIN", q.Question[0].String(), mdns.RcodeToString[r.Rcode])
		}
	}
	if got := up.seen(); len(got) != 3 {
		t.Fatalf("upstream saw %v, want the 3 other reverse queries", got)
	}
}

func TestParseReverse(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" for not a reverse name
	}{
		{"1.0.77.127.in-addr.arpa.", "127.77.0.1"},
		{"1.0.77.127.in-addr.arpa", "127.77.0.1"},
		{"255.255.255.255.In-Addr.Arpa.", "255.255.255.255"},
		{"0.0.0.0.in-addr.arpa.", "0.0.0.0"},
		{"256.0.77.127.in-addr.arpa.", ""},
		{"01.0.77.127.in-addr.arpa.", ""},
		{"-1.0.77.127.in-addr.arpa.", ""},
		{"+1.0.77.127.in-addr.arpa.", ""},
		{"0.77.127.in-addr.arpa.", ""},
		{"1.1.0.77.127.in-addr.arpa.", ""},
		{"1..77.127.in-addr.arpa.", ""},
		{"in-addr.arpa.", ""},
		{".in-addr.arpa.", ""},
		{"1.0.77.127.ip6.arpa.", ""},
		{"1\\.0.77.127.in-addr.arpa.", ""},
	} {
		got, ok := parseReverse(tc.name)
		if (tc.want == "") == ok || ok && got != netip.MustParseAddr(tc.want) {
			t.Errorf("parseReverse(%q) = %v, %v; want %q", tc.name, got, ok, tc.want)
		}
	}
}

// FuzzParseReverse checks parseReverse against the address miekg/dns
// writes the reverse name of.
func FuzzParseReverse(f *testing.F) {
	for _, s := range []string{"1.0.77.127.in-addr.arpa.", "256.1.1.1.in-addr.arpa", "01.0.0.0.IN-ADDR.arpa.", ".in-addr.arpa."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		a, ok := parseReverse(name)
		if !ok {
			return
		}
		want, err := mdns.ReverseAddr(a.String())
		if err != nil {
			t.Fatalf("ReverseAddr(%v): %v", a, err)
		}
		if !strings.EqualFold(strings.TrimSuffix(name, ".")+".", want) {
			t.Fatalf("parseReverse(%q) = %v, whose reverse name is %q", name, a, want)
		}
	})
}

func TestTTLSetting(t *testing.T) {
	cfg := testConfig(newFakeServices(), deadAddr(t))
	cfg.TTL = 30
	s := startServer(t, cfg)
	for _, tc := range []struct {
		qname string
		qtype uint16
	}{{"web.local.", mdns.TypeA}, {"v2.web.local.", mdns.TypeA}, {"web.local.", mdns.TypeSRV}, {"1.0.77.127.in-addr.arpa.", mdns.TypePTR}} {
		r := ask(t, "udp", s.UDPAddr().String(), question(tc.qname, tc.qtype))
		if len(r.Answer) == 0 || r.Answer[0].Header().Ttl != 30 {
			t.Errorf("%s %s: %v, want TTL 30", tc.qname, mdns.TypeToString[tc.qtype], r.Answer)
		}
	}
	r := ask(t, "udp", s.UDPAddr().String(), question("nope.local.", mdns.TypeA))
	if soa, ok := onlySOA(r.Ns); r.Rcode != mdns.RcodeNameError || !ok || soa.Minttl != 30 || soa.Hdr.Ttl != 30 {
		t.Errorf("NXDOMAIN %v, want an SOA whose TTL and minimum are 30", r.Ns)
	}
}
