package dns

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// lateServices knows "web" at once; "late" and "gone" only after
// AwaitName, which takes delay (as asking Consul's catalog does): then
// "late" exists and "gone" does not.
type lateServices struct {
	staticServices
	delay time.Duration

	mu      sync.Mutex
	learned map[string]bool
	awaited int
}

func (l *lateServices) LookupVIP(ctx context.Context, service string) (netip.Addr, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case service == "web":
		return netip.MustParseAddr("127.77.0.1"), true, nil
	case !l.learned[service]:
		return netip.Addr{}, false, fmt.Errorf("asking consul: %w", ErrNotKnownYet)
	case service == "late":
		return netip.MustParseAddr("127.77.0.9"), true, nil
	}
	return netip.Addr{}, false, nil
}

func (l *lateServices) AwaitName(ctx context.Context, service string) error {
	select {
	case <-time.After(l.delay):
	case <-ctx.Done():
		return ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.learned[service] = true
	l.awaited++
	return nil
}

// A name the services must ask Consul about is answered once they know,
// over UDP (off the read loop, which meanwhile answers other names at
// once) and TCP; one they learn does not exist is NXDOMAIN.
func TestNameNotKnownYetIsAnsweredWhenKnown(t *testing.T) {
	svc := &lateServices{staticServices: newFakeServicesNoRecord(), delay: 300 * time.Millisecond, learned: map[string]bool{}}
	s := startServer(t, testConfig(svc, deadAddr(t)))
	udp := s.UDPAddr().String()

	done := make(chan *mdns.Msg)
	go func() {
		c := &mdns.Client{Net: "udp", Timeout: 5 * time.Second}
		r, _, err := c.Exchange(question("late.local.", mdns.TypeA), udp)
		if err != nil {
			t.Errorf("late.local: %v", err)
		}
		done <- r
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	r := ask(t, "udp", udp, question("web.local.", mdns.TypeA))
	if len(r.Answer) != 1 || time.Since(start) > 200*time.Millisecond {
		t.Errorf("web.local while late.local waits: %v after %v, want its VIP at once", r.Answer, time.Since(start))
	}
	r = <-done
	if r == nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "127.77.0.9" {
		t.Fatalf("late.local: %v, want 127.77.0.9", r)
	}
	for _, network := range []string{"udp", "tcp"} {
		addr := udp
		if network == "tcp" {
			addr = s.TCPAddr().String()
		}
		r := ask(t, network, addr, question("gone-"+network+".local.", mdns.TypeA))
		if r.Rcode != mdns.RcodeNameError {
			t.Errorf("gone-%s.local over %s: %s, want NXDOMAIN", network, network, mdns.RcodeToString[r.Rcode])
		}
	}
}

// A wait longer than ForwardTimeout is SERVFAIL: the client may ask again.
func TestNameNotKnownInTimeIsServFail(t *testing.T) {
	svc := &lateServices{staticServices: newFakeServicesNoRecord(), delay: 5 * time.Second, learned: map[string]bool{}}
	s := startServer(t, testConfig(svc, deadAddr(t))) // ForwardTimeout 500ms
	r := ask(t, "udp", s.UDPAddr().String(), question("late.local.", mdns.TypeA))
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("late.local: %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
}
