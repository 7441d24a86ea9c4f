package upstream_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// closingSidecar is an mTLS instance that keeps its connections alive
// until the test closes them, as a sidecar with an idle timeout (or one
// that restarts) does; it counts what it served. It speaks HTTP/1.1, or
// h2c under TLS (as a service declared http2 is reached).
type closingSidecar struct {
	addr  string
	mu    sync.Mutex
	conns []closingConn
	seen  map[string]int // "METHOD body" → times served
	count int            // connections accepted
}

type closingConn struct {
	raw *net.TCPConn
	tc  *tls.Conn
}

func newClosingSidecar(t *testing.T, conf *tls.Config, h2 bool) *closingSidecar {
	s := &closingSidecar{seen: map[string]int{}}
	serve := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.seen[r.Method+" "+string(b)]++
		s.mu.Unlock()
		answer := "served " + r.Method + " " + string(b)
		w.Header().Set("X-Instance", "s")
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		io.WriteString(w, answer)
	})
	s.addr = upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		tc := tls.Server(c, conf)
		s.mu.Lock()
		s.conns = append(s.conns, closingConn{raw: c, tc: tc})
		s.count++
		s.mu.Unlock()
		if h2 {
			// Hidden behind net.Conn: http2 would want ALPN of a *tls.Conn.
			(&http2.Server{}).ServeConn(struct{ net.Conn }{tc}, &http2.ServeConnOpts{Handler: serve})
			return
		}
		br := bufio.NewReader(tc)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			rec := httptest.NewRecorder()
			serve(rec, req)
			if err := rec.Result().Write(tc); err != nil {
				return
			}
		}
	})
	return s
}

// closeIdle closes every connection it holds the way mode says, and
// returns once the caller's kernel has what it sent.
func (s *closingSidecar) closeIdle(t *testing.T, mode string) {
	t.Helper()
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		switch mode {
		case "close_notify and FIN":
			if err := c.tc.CloseWrite(); err != nil {
				t.Fatalf("close_notify: %v", err)
			}
			c.raw.CloseWrite()
			waitFINAcked(t, c.raw)
		case "FIN only":
			c.raw.CloseWrite()
			waitFINAcked(t, c.raw)
		case "RST":
			c.raw.SetLinger(0)
		}
		c.raw.Close()
	}
	if mode == "RST" {
		// Nothing to wait on for a reset: on loopback it is taken in by
		// the receiving kernel at once; a little time covers a loaded one.
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFINAcked waits until the peer's kernel acknowledged c's FIN (the
// socket is in FIN_WAIT2, or past it when the peer closed too): the
// peer's socket has it.
func waitFINAcked(t *testing.T, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	upstreamtest.Eventually(t, "the FIN to be acknowledged", func() bool {
		var state uint8
		if err := rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		}); err != nil {
			// The sidecar's handler closed it: the peer answered the FIN
			// with its own close.
			return true
		}
		switch state {
		case unix.BPF_TCP_FIN_WAIT2, unix.BPF_TCP_TIME_WAIT, unix.BPF_TCP_CLOSE:
			return true
		}
		return false
	})
}

// A pooled mTLS connection that the instance's sidecar closed while it
// was idle (with a close_notify and a FIN, a FIN alone, or a reset) is
// not used again: the next request, a POST, goes on a new connection and
// reaches the instance exactly once; before, a pooled connection carried
// several requests (the session tickets TLS 1.3 sends after the handshake
// do not make it look closed), and the new connection resumes the
// session. Each path with a pool: an HTTP/1.1 app to an HTTP/1.1
// instance (the h1 forwarder), an h2c app to one (the HTTP/2 front-end's
// HTTP/1.1 transport), an app to an instance declared http2 (its h2c
// transport).
func TestMTLSIdleConnClosedBySidecar(t *testing.T) {
	k := newMTLSKit(t)
	conf := k.manager(t, "web", false).ServerConfig(nil)
	client := k.manager(t, "web-client", false)
	for _, path := range []string{"h1 to h1", "h2c to h1", "h1 to h2c"} {
		for _, mode := range []string{"close_notify and FIN", "FIN only", "RST"} {
			t.Run(path+" "+mode, func(t *testing.T) {
				toH2 := path == "h1 to h2c"
				car := newClosingSidecar(t, conf, toH2)
				inst := upstreamtest.Instance(t, "web", "s", upstreamtest.DeadAddr(t))
				if toH2 {
					upstreamtest.WithMeta(inst, "meshlet-protocol", "http2")
				}
				_, m, front := mtlsMesh(t, upstream.MTLSStrict, client, nil, []*api.ServiceEntry{inst}, sidecarEntry(t, "s", car.addr))
				c := upstreamtest.Client(front)
				if path == "h2c to h1" {
					protocols := new(http.Protocols)
					protocols.SetUnencryptedHTTP2(true)
					c.Transport.(*http.Transport).Protocols = protocols
				}
				for i := range 3 {
					if status, body, h := upstreamtest.Do(t, c, http.MethodGet, ""); status != http.StatusOK {
						t.Fatalf("GET %d: %d %q %s", i, status, body, h.Get("X-Meshlet-Error"))
					}
				}
				car.mu.Lock()
				accepted := car.count
				car.mu.Unlock()
				if accepted != 1 {
					t.Fatalf("3 GETs in a row took %d connections to the sidecar, want 1 kept alive", accepted)
				}

				car.closeIdle(t, mode)
				status, body, h := upstreamtest.Do(t, c, http.MethodPost, "order-1")
				if status != http.StatusOK || body != "served POST order-1" {
					t.Errorf("POST after the sidecar closed the idle connection: %d %q %s, want the instance's answer",
						status, body, h.Get("X-Meshlet-Error"))
				}
				car.mu.Lock()
				n, accepted := car.seen["POST order-1"], car.count
				car.mu.Unlock()
				if n != 1 {
					t.Errorf("the POST reached the instance %d times, want once", n)
				}
				if accepted != 2 {
					t.Errorf("the sidecar accepted %d connections, want 2 (one new for the POST)", accepted)
				}
				if st := m.MTLSStats(); st.Handshakes != 2 || st.Resumed != 1 || st.Failed != 0 {
					t.Errorf("stats %+v: want the second handshake resumed", st)
				}
			})
		}
	}
}
