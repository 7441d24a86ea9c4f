package intercept

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOriginalDstNotRedirected accepts a plain loopback connection, which no
// rule redirected: OriginalDst must say so rather than return an address
// that would make the proxy connect to itself.
func TestOriginalDstNotRedirected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := OriginalDst(s.(*net.TCPConn))
	if err == nil {
		t.Fatalf("OriginalDst of an unredirected connection = %s, want an error", got)
	}
	if !strings.Contains(err.Error(), "reading original destination of connection to "+ln.Addr().String()) {
		t.Errorf("error %q does not say which connection", err)
	}
}

func TestOriginalDstBadConns(t *testing.T) {
	if _, err := OriginalDst(nil); err == nil || !strings.Contains(err.Error(), "nil connection") {
		t.Errorf("OriginalDst(nil) = %v, want a nil connection error", err)
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp6", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := OriginalDst(s.(*net.TCPConn)); err == nil || !strings.Contains(err.Error(), "only IPv4") {
		t.Errorf("OriginalDst of an IPv6 connection = %v, want an only-IPv4 error", err)
	}
}

func TestParseSockaddrIn(t *testing.T) {
	sa := func(fam uint16, port uint16, a, b, c, d byte) []byte {
		buf := make([]byte, 16)
		binary.NativeEndian.PutUint16(buf[0:2], fam)
		binary.BigEndian.PutUint16(buf[2:4], port)
		copy(buf[4:8], []byte{a, b, c, d})
		return buf
	}
	tests := []struct {
		name    string
		in      []byte
		want    netip.AddrPort
		wantErr string
	}{
		{name: "vip", in: sa(unix.AF_INET, 80, 127, 77, 0, 9), want: netip.MustParseAddrPort("127.77.0.9:80")},
		{name: "high port", in: sa(unix.AF_INET, 65535, 10, 0, 0, 1), want: netip.MustParseAddrPort("10.0.0.1:65535")},
		{name: "ipv6 family", in: sa(unix.AF_INET6, 80, 0, 0, 0, 0), wantErr: "want AF_INET"},
		{name: "short", in: []byte{2, 0, 0}, wantErr: "sockaddr_in of 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSockaddrIn(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSockaddrIn = %v, %v; want error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseSockaddrIn = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
