package dns

import (
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// Queries waiting on the upstream cost no goroutine each: a stub that
// fires a burst of lookups at a slow resolver does not grow the sidecar by
// a goroutine (and its stack) per lookup. When the upstream stays silent
// they fail over on time and get SERVFAIL.
func TestUDPForwardingWaitsWithoutGoroutines(t *testing.T) {
	const n = 64
	cfg := testConfig(newFakeServices(), silentUpstream(t))
	cfg.ForwardTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	conn, err := net.Dial("udp", s.UDPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One query first, so that the upstream socket and its reader exist.
	ids := 0
	sendQuery := func() {
		q := question(fmt.Sprintf("n%d.example.org.", ids), mdns.TypeA)
		q.Id = uint16(ids)
		ids++
		if _, err := conn.Write(mustPack(q)); err != nil {
			t.Fatal(err)
		}
	}
	sendQuery()
	inflight := func() int {
		k := 0
		for _, up := range s.udpUps {
			for i := range up.slots {
				if c := up.slots[i].Load(); c != nil {
					k += c.inflight()
				}
			}
		}
		return k
	}
	waitFor(t, func() bool { return inflight() == 1 })
	before := runtime.NumGoroutine()
	for range n {
		sendQuery()
	}
	waitFor(t, func() bool { return inflight() == n+1 })
	if grew := runtime.NumGoroutine() - before; grew > 8 {
		t.Errorf("%d queries waiting on the upstream took %d more goroutines", n, grew)
	}
	buf := make([]byte, 512)
	servfails := 0
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for servfails < n+1 {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d SERVFAILs after the timeout: %v", servfails, n+1, err)
		}
		if k >= headerLen && buf[3]&0x0f == mdns.RcodeServerFailure {
			servfails++
		}
	}
}
