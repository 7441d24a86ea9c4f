package registration

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Lines as a little-endian kernel prints them.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1081 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3AA9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1082 1 0000000000000000 100 0 0 10 0
   2: 05004D0A:1F90 07004D0A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1083 1 0000000000000000 20 4 30 10 -1
   3: 05004D0A:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1084 1 0000000000000000 100 0 0 10 0
`

const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1770 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
`

func TestParseProcNetTCP(t *testing.T) {
	got, err := parseProcNetTCP([]byte(procNetTCP), false)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("0.0.0.0:8080"),
		netip.MustParseAddrPort("127.0.0.1:15017"),
		netip.MustParseAddrPort("10.77.0.5:9090"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("tcp:\n got %v\nwant %v", got, want)
	}
	got6, err := parseProcNetTCP([]byte(procNetTCP6), true)
	if err != nil {
		t.Fatal(err)
	}
	want6 := []netip.AddrPort{
		netip.MustParseAddrPort("[::]:8080"),
		netip.MustParseAddrPort("[::1]:5000"),
		netip.MustParseAddrPort("127.0.0.1:6000"), // ::ffff:127.0.0.1, unmapped
	}
	if !slices.Equal(got6, want6) {
		t.Errorf("tcp6:\n got %v\nwant %v", got6, want6)
	}
	if _, err := parseProcNetTCP([]byte("header\n 0: zz:1F90 0 0A\n"), false); err == nil {
		t.Error("a bad address was accepted")
	}
}

func TestAppPorts(t *testing.T) {
	socks := func(s ...string) []netip.AddrPort {
		var out []netip.AddrPort
		for _, a := range s {
			out = append(out, netip.MustParseAddrPort(a))
		}
		return out
	}
	meshlet := []uint16{15000, 15001, 15053}
	tests := []struct {
		name    string
		socks   []netip.AddrPort
		exclude []uint16
		want    []int
	}{
		{"nothing", nil, meshlet, nil},
		{"only meshlet", socks("127.0.0.1:15000", "127.0.0.1:15001", "127.0.0.1:15053"), meshlet, nil},
		{"the app on all addresses, v4 and v6", socks("0.0.0.0:8080", "[::]:8080", "127.0.0.1:15001"), meshlet, []int{8080}},
		{"loopback-only listeners cannot be called", socks("127.0.0.1:6060", "[::1]:6061", "[::]:8080"), meshlet, []int{8080}},
		{"meshlet's ports even on all addresses", socks("0.0.0.0:15000", "10.0.0.5:80"), meshlet, []int{80}},
		{"several", socks("[::]:9090", "0.0.0.0:8080", "10.0.0.5:8080"), meshlet, []int{8080, 9090}},
		{"ignored ports", socks("[::]:9090", "0.0.0.0:8080"), append(meshlet, 9090), []int{8080}},
	}
	for _, tt := range tests {
		if got := appPorts(tt.socks, tt.exclude); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The real files of this namespace show a listener the test opens.
func TestListeningSocketsSeesOwnListener(t *testing.T) {
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	socks, err := ListeningSockets()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(appPorts(socks, nil), int(port)) {
		t.Errorf("port %d not among %v", port, socks)
	}
}

func FuzzParseProcNetTCP(f *testing.F) {
	f.Add(procNetTCP, false)
	f.Add(procNetTCP6, true)
	f.Add("h\n 0: 0100007F:FFFF 0 0A", false)
	f.Fuzz(func(t *testing.T, data string, v6 bool) {
		socks, err := parseProcNetTCP([]byte(data), v6)
		if err != nil {
			return
		}
		for _, s := range socks {
			if !s.Addr().IsValid() {
				t.Fatalf("invalid address from %q", data)
			}
		}
		if n := strings.Count(data, "\n"); len(socks) > n {
			t.Fatalf("%d sockets from %d lines after the header", len(socks), n)
		}
	})
}
