package dns

import (
	"encoding/binary"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// An app whose resolver fires many lookups at once (A and AAAA for every
// name of a page, say) gets every answer: the DNS socket's receive buffer
// holds a burst far larger than the kernel's default (~90 small queries)
// while the loop catches up.
func TestBurstOfQueriesFromOneSocketIsAnsweredWhole(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to size the client's own receive buffer (CI=true, so not skipping)")
		}
		t.Skip("needs root to size the client's own receive buffer")
	}
	s := startServer(t, testConfig(newFakeServicesNoRecord(), "127.0.0.1:9")) // never asked
	c, err := net.DialUDP("udp", nil, s.UDPAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client must be able to hold all the answers itself.
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 16<<20)
	})
	if err != nil {
		t.Fatal(err)
	}

	const burst = 1500
	m := new(mdns.Msg)
	m.SetQuestion("web.local.", mdns.TypeA)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for i := range burst {
		binary.BigEndian.PutUint16(q, uint16(i))
		if _, err := c.Write(q); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	seen := make([]bool, burst)
	got := 0
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	for got < burst {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		var r mdns.Msg
		if r.Unpack(buf[:n]) != nil || len(r.Answer) != 1 || int(r.Id) >= burst || seen[r.Id] {
			t.Fatalf("unexpected reply %v", r)
		}
		seen[r.Id] = true
		got++
	}
	if got != burst {
		t.Errorf("%d of a burst of %d queries answered; the rest were dropped by the server's socket", got, burst)
	}
}
