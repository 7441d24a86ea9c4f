package upstream_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// BenchmarkForwardMTLS is one keep-alive GET through the outbound path to
// one instance, in plaintext and over mTLS to its sidecar (a Go TLS server
// in this process, as is the instance).
func BenchmarkForwardMTLS(b *testing.B) {
	k := newMTLSKit(b)
	car := k.sidecar(b, "web", "a")
	plain := upstreamtest.WhoAmI(b, "a")
	for _, mode := range []string{"plaintext", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			inst := upstreamtest.Instance(b, "web", "a", upstreamtest.AddrOf(plain))
			var connect []*api.ServiceEntry
			if mode == "mtls" {
				connect = append(connect, sidecarEntry(b, "a", car.addr))
			}
			_, _, front := mtlsMesh(b, upstream.MTLSPermissive, k.manager(b, "web-client", false), nil, []*api.ServiceEntry{inst}, connect...)
			c := upstreamtest.Client(front)
			b.ResetTimer()
			for b.Loop() {
				resp, err := c.Get("http://web.local/")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// cpuTime is the CPU this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMTLSHandshake is one Connect mTLS handshake over loopback with
// certs' client and server configs (ECDSA P-256 leaves, as Consul's CA
// makes by default), both sides in this process: full, with a client that
// keeps no session, and resumed, with the client config the mesh keeps
// per service. cpu-µs/op is the CPU of both sides together.
func BenchmarkMTLSHandshake(b *testing.B) {
	k := newMTLSKit(b)
	server := k.manager(b, "web", false).ServerConfig(nil)
	client := k.manager(b, "web-client", false)
	addr := upstreamtest.TCPServer(b, func(c *net.TCPConn) {
		tc := tls.Server(c, server)
		if tc.Handshake() == nil {
			tc.Write([]byte{1}) // after the session ticket: the client reads both
			tc.Read(make([]byte, 1))
		}
	})
	for _, mode := range []string{"full", "resumed"} {
		b.Run(mode, func(b *testing.B) {
			conf := client.ClientConfig(certs.Target{Service: "web"})
			if mode == "full" {
				conf.ClientSessionCache = nil
			}
			resumed := 0
			cpu0 := cpuTime()
			for b.Loop() {
				raw, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				tc := tls.Client(raw, conf)
				if err := tc.Handshake(); err != nil {
					b.Fatal(err)
				}
				if _, err := tc.Read(make([]byte, 1)); err != nil {
					b.Fatal(err)
				}
				if tc.ConnectionState().DidResume {
					resumed++
				}
				tc.Close()
			}
			b.ReportMetric(float64(resumed)/float64(b.N)*100, "%resumed")
			// CPU, not wall time: on a shared machine the wall time says
			// more of the neighbours than of the handshake.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
