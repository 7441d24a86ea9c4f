package harness

import (
	"net/netip"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:18080/payload
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   789.00us  100.00us   5.00ms   90.00%
    Req/Sec    20.10k     1.00k   21.00k    80.00%
  100512 requests in 5.00s, 120.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20102.40
Transfer/sec:     24.00MB
`
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.rps != 20102.40 || r.requests != 100512 || r.errors != 7 {
		t.Errorf("got %+v", r)
	}
	if _, err := parseWrk("nothing"); err == nil {
		t.Error("no error for output without statistics")
	}
}

func TestParseDnsperf(t *testing.T) {
	out := `Statistics:

  Queries sent:         425116
  Queries completed:    425100 (100.00%)
  Queries lost:         16 (0.00%)

  Response codes:       NOERROR 425000 (99.98%), REFUSED 100 (0.02%)
  Average packet size:  request 27, response 43
  Run time (s):         5.000000
  Queries per second:   85020.000000

  Average Latency (s):  0.001110 (min 0.000021, max 0.004000)
  Latency StdDev (s):   0.000200
`
	r, err := parseDnsperf(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.qps != 85020 || r.lost != 16 || r.latencyUs < 1109 || r.latencyUs > 1111 ||
		r.rcodes["NOERROR"] != 425000 || r.rcodes["REFUSED"] != 100 {
		t.Errorf("got %+v", r)
	}
}

func TestTCPWatchMatches(t *testing.T) {
	w := &tcpWatch{from: netip.MustParseAddr("10.77.0.4"), to: netip.MustParseAddrPort("10.77.0.6:8080")}
	pkt := func(src, dst string, dport uint16, flags byte, payload int) []byte {
		b := make([]byte, 40+payload)
		b[0] = 0x45
		total := len(b)
		b[2], b[3] = byte(total>>8), byte(total)
		b[9] = 6
		s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
		copy(b[12:16], s[:])
		copy(b[16:20], d[:])
		b[22], b[23] = byte(dport>>8), byte(dport)
		b[32] = 5 << 4
		b[33] = flags
		return b
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"syn", pkt("10.77.0.4", "10.77.0.6", 8080, 0x02, 0), true},
		{"data", pkt("10.77.0.4", "10.77.0.6", 8080, 0x18, 100), true},
		{"bare ack", pkt("10.77.0.4", "10.77.0.6", 8080, 0x10, 0), false},
		{"consul's check", pkt("10.77.0.2", "10.77.0.6", 8080, 0x02, 0), false},
		{"other port", pkt("10.77.0.4", "10.77.0.6", 9000, 0x02, 0), false},
		{"answer", pkt("10.77.0.6", "10.77.0.4", 40000, 0x18, 100), false},
		{"short", []byte{0x45, 0}, false},
	} {
		if got := w.matches(c.pkt, len(c.pkt)); got != c.want {
			t.Errorf("%s: matches = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median of 3 = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 4 = %v", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("median of none = %v", m)
	}
}

func TestSmokeConfigIsShort(t *testing.T) {
	c := Smoke().withDefaults()
	if c.Runs != 1 || !c.NoWarmup || c.S1Duration > time.Second || len(c.S1Conns) != 1 {
		t.Errorf("smoke config is not short: %+v", c)
	}
}

func TestParsePerfCount(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      int64
	}{
		{"counted", "\n1234567,,raw_syscalls:sys_enter,5000123456,100.00,,\n", 1234567},
		{"not supported", "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n", -1},
		{"not counted", "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n", -1},
		{"other event only", "12,,context-switches,5000,100.00,,\n", -1},
		{"empty", "", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parsePerfCount(tc.out, "raw_syscalls:sys_enter"); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}
