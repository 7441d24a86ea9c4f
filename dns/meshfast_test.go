package dns

import (
	"fmt"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// fastTwins are two UDP front ends of one server: one with the fast path,
// one that takes the general path for everything.
type fastTwins struct {
	fast, general *udpServer
	services      *fakeServices
}

func newFastTwins(t testing.TB) fastTwins {
	t.Helper()
	services := newFakeServices()
	services.vips["v6"] = netip.MustParseAddr("fd00::77")
	services.vips["mapped"] = netip.MustParseAddr("::ffff:127.77.0.9")
	services.vips["invalid"] = netip.Addr{}
	cfg := testConfig(services, "127.0.0.1:9")
	cfg.Suffixes = []string{"local", "service.consul", "db.local"}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.forwardLimit = 0 // outside names: SERVFAIL inline, nothing sent
	fast := newUDPServer(s, nil)
	if fast.fast == nil {
		t.Fatal("no fast path")
	}
	general := newUDPServer(s, nil)
	general.fast = nil
	return fastTwins{fast: fast, general: general, services: services}
}

// replies returns what the fast path wrote for b (ok=false when it left b
// alone) and what the general path writes for it.
func (tw fastTwins) replies(b []byte) (fast []byte, ok bool, general []byte) {
	wf := &udpWriter{out: make([]byte, 0, 512), batched: true}
	ok = tw.fast.fast.answer(tw.fast.s, wf, b)
	wg := &udpWriter{out: make([]byte, 0, 512), batched: true}
	tw.general.handle(wg, b)
	return wf.reply, ok, wg.reply
}

func fastPathQueries() map[string][]byte {
	edns := func(m *mdns.Msg, do bool) *mdns.Msg { m.SetEdns0(4096, do); return m }
	flags := func(m *mdns.Msg) *mdns.Msg {
		m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData, m.Zero, m.Authoritative = true, true, true, true, true
		return m
	}
	return map[string][]byte{
		"A":                   mustPack(question("web.local.", mdns.TypeA)),
		"AAAA of a v4 VIP":    mustPack(question("web.local.", mdns.TypeAAAA)),
		"AAAA of a v6 VIP":    mustPack(question("v6.local.", mdns.TypeAAAA)),
		"A of a v6 VIP":       mustPack(question("v6.local.", mdns.TypeA)),
		"A of a mapped VIP":   mustPack(question("mapped.local.", mdns.TypeA)),
		"MX":                  mustPack(question("web.local.", mdns.TypeMX)),
		"unknown service":     mustPack(question("nosuch.local.", mdns.TypeA)),
		"lookup fails":        mustPack(question("broken.local.", mdns.TypeA)),
		"invalid VIP":         mustPack(question("invalid.local.", mdns.TypeA)),
		"upper case":          mustPack(question("WeB.LOCAL.", mdns.TypeA)),
		"longer suffix":       mustPack(question("web.Service.Consul.", mdns.TypeA)),
		"EDNS":                mustPack(edns(question("web.local.", mdns.TypeA), false)),
		"EDNS with DO":        mustPack(edns(question("nosuch.local.", mdns.TypeA), true)),
		"all flags":           mustPack(flags(question("web.local.", mdns.TypeA))),
		"underscore and dash": mustPack(question("_a-b.local.", mdns.TypeA)),
	}
}

// The fast path takes the common mesh queries.
func TestFastPathTakesMeshQueries(t *testing.T) {
	tw := newFastTwins(t)
	for name, b := range fastPathQueries() {
		t.Run(name, func(t *testing.T) {
			fast, ok, general := tw.replies(b)
			if !ok {
				t.Fatalf("fast path left %x to the general path", b)
			}
			if string(fast) != string(general) {
				t.Errorf("fast path answered\n%x\ngeneral path\n%x", fast, general)
			}
		})
	}
}

// What the fast path must leave alone, because the general path answers
// it otherwise than with a mesh answer, or it is not a plain query.
func TestFastPathLeavesTheRest(t *testing.T) {
	tw := newFastTwins(t)
	chaos := question("web.local.", mdns.TypeA)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	cookie := question("web.local.", mdns.TypeA)
	cookie.SetEdns0(1232, false)
	cookie.IsEdns0().Option = append(cookie.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0123456789abcdef"})
	notify := question("web.local.", mdns.TypeA)
	notify.Opcode = mdns.OpcodeNotify
	resp := question("web.local.", mdns.TypeA)
	resp.Response = true
	trailing := append(mustPack(question("web.local.", mdns.TypeA)), 0)
	for name, b := range map[string][]byte{
		"outside name":         mustPack(question("example.org.", mdns.TypeA)),
		"apex":                 mustPack(question("local.", mdns.TypeA)),
		"name that is a zone":  mustPack(question("db.local.", mdns.TypeA)),
		"tag and service":      mustPack(question("v1.web.service.consul.", mdns.TypeA)),
		"escaped byte":         mustPack(question(`w\.b.local.`, mdns.TypeA)),
		"chaos class":          mustPack(chaos),
		"EDNS option":          mustPack(cookie),
		"notify":               mustPack(notify),
		"response":             mustPack(resp),
		"trailing byte":        trailing,
		"header only":          mustPack(question("web.local.", mdns.TypeA))[:headerLen],
		"cut in the question":  mustPack(question("web.local.", mdns.TypeA))[:headerLen+8],
		"service not a suffix": mustPack(question("web.localx.", mdns.TypeA)),
	} {
		t.Run(name, func(t *testing.T) {
			if fast, ok, _ := tw.replies(b); ok {
				t.Errorf("fast path answered %x with %x; want it left to the general path", b, fast)
			}
		})
	}
	// "db.local" is a zone of its own in these twins: the general path
	// answers its SOA, as the apex it is.
	if _, _, general := tw.replies(mustPack(question("db.local.", mdns.TypeSOA))); len(general) < 8 || general[7] != 1 {
		t.Errorf("the general path should answer the zone db.local's SOA: %x", general)
	}
}

// FuzzFastPath: whatever the fast path answers, it answers byte for byte
// as the general path does.
func FuzzFastPath(f *testing.F) {
	for _, b := range fastPathQueries() {
		f.Add(b)
	}
	for _, b := range udpPackets() {
		f.Add(b)
	}
	tw := newFastTwins(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok, general := tw.replies(b)
		if ok && string(fast) != string(general) {
			t.Errorf("for %x the fast path answered\n%x\nthe general path\n%x", b, fast, general)
		}
	})
}

// The fast path allocates nothing per query once it has seen the name,
// counting queries included.
func TestFastPathDoesNotAllocate(t *testing.T) {
	cfg := testConfig(newFakeServicesNoRecord(), "127.0.0.1:9")
	cfg.Metrics = &countingMetrics{}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u := newUDPServer(s, nil)
	w := &udpWriter{out: make([]byte, 0, 512), batched: true}
	b := mustPack(question("Web.local.", mdns.TypeA))
	allocs := testing.AllocsPerRun(100, func() {
		w.reply = nil
		if !u.fast.answer(s, w, b) {
			panic(fmt.Sprintf("fast path left %x", b))
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per query, want 0", allocs)
	}
}
