package integration

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// After meshlet has forwarded many outside names, every mesh lookup the app
// makes the way a stub resolver makes it (a new socket on an ephemeral port
// each time) still reaches meshlet. A forwarding socket that meshlet closes
// leaves a conntrack entry (app ip:port → resolver:53) that the redirect
// never applied to; an app query that later leaves from that port to that
// resolver would match it and reach the resolver instead of meshlet.
func TestDNSMeshLookupsAfterForwardingLoad(t *testing.T) {
	const (
		forwarded = 3000
		mesh      = 1000
		perQuery  = 2 * time.Second
		phaseMax  = 90 * time.Second
	)
	w := startWorld(t, meshlab.Options{})
	vip := resolveVIP(t, w, "web.local")
	resolver := net.JoinHostPort(w.DNSHost.IP.String(), "53")
	outside := meshlab.OutsideAddr

	var fwdBad, meshVIP, meshOther, meshFailed int
	var firstBad []string
	note := func(s string) {
		if len(firstBad) < 5 {
			firstBad = append(firstBad, s)
		}
	}
	start := time.Now()
	err := w.App.Do(func() error {
		// Sequential: one query at a time bounds the rate, and the whole
		// phase is bounded in time as well as count.
		deadline := time.Now().Add(phaseMax)
		for i := range forwarded {
			if time.Now().After(deadline) {
				return fmt.Errorf("forwarding phase: only %d of %d lookups in %s", i, forwarded, phaseMax)
			}
			name := fmt.Sprintf("n%d.example.", i)
			r, err := freshSocketLookup(resolver, name, perQuery)
			if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || answerAddr(r) != outside {
				fwdBad++
				note(fmt.Sprintf("%s: %v %v", name, err, r))
			}
		}
		deadline = time.Now().Add(phaseMax)
		for i := range mesh {
			if time.Now().After(deadline) {
				return fmt.Errorf("mesh phase: only %d of %d lookups in %s", i, mesh, phaseMax)
			}
			r, err := freshSocketLookup(resolver, "web.local.", perQuery)
			switch {
			case err != nil:
				meshFailed++
				note(fmt.Sprintf("web.local: %v", err))
			case r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 && answerAddr(r) == vip:
				meshVIP++
			default:
				meshOther++
				note(fmt.Sprintf("web.local: rcode %s, answer %v", dns.RcodeToString[r.Rcode], r.Answer))
			}
		}
		return nil
	})
	t.Logf("%d forwarded lookups (%d bad), then %d mesh lookups: %d got meshlet's VIP %s, %d another answer, %d no answer; test resolver saw web.local %d times; took %s",
		forwarded, fwdBad, mesh, meshVIP, vip, meshOther, meshFailed, w.Resolver.Count("web.local"), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if fwdBad != 0 {
		t.Errorf("%d of %d forwarded lookups did not get the test resolver's answer %s; first: %q", fwdBad, forwarded, outside, firstBad)
	}
	if meshVIP != mesh {
		t.Errorf("%d of %d mesh lookups did not get meshlet's VIP %s; first: %q", mesh-meshVIP, mesh, vip, firstBad)
	}
	// The resolver's NXDOMAIN for web.local would be "another answer"
	// above; its count proves where such answers came from.
	if n := w.Resolver.Count("web.local"); n != 0 {
		t.Errorf("the test resolver was asked for web.local %d times: those lookups bypassed meshlet", n)
	}
}

// freshSocketLookup asks addr for name's A record from a new UDP socket on
// an ephemeral port, as a stub resolver does, and closes it.
func freshSocketLookup(addr, name string, timeout time.Duration) (*dns.Msg, error) {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	defer conn.Close()
	c := &dns.Conn{Conn: conn}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	q := new(dns.Msg).SetQuestion(name, dns.TypeA)
	if err := c.WriteMsg(q); err != nil {
		return nil, fmt.Errorf("sending %s: %w", name, err)
	}
	r, err := c.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("reading the reply for %s from %s: %w", name, conn.LocalAddr(), err)
	}
	if r.Id != q.Id {
		return nil, fmt.Errorf("reply ID %d, query ID %d", r.Id, q.Id)
	}
	return r, nil
}

// answerAddr is the address of r's first answer when it is an A record.
func answerAddr(r *dns.Msg) netip.Addr {
	if len(r.Answer) == 0 {
		return netip.Addr{}
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		return netip.Addr{}
	}
	addr, _ := netip.AddrFromSlice(a.A.To4())
	return addr
}
