package upstream_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// blackHole makes dials to the addresses it holds wait until their
// deadline, as a killed container's address does: neither accepted nor
// refused.
type blackHole struct {
	mu    sync.Mutex
	holes map[string]bool
}

func (b *blackHole) set(addr string, hole bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holes == nil {
		b.holes = map[string]bool{}
	}
	b.holes[addr] = hole
}

func (b *blackHole) control(ctx context.Context, _, address string, _ syscall.RawConn) error {
	b.mu.Lock()
	hole := b.holes[address]
	b.mu.Unlock()
	if hole {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// TestDeadInstanceCostsOneConnectTimeout is the regression test of 3–4
// requests in a row each waiting the whole dial timeout on a killed
// instance: the first connect timeout ejects it, no request waits on it
// again, and a probe readmits it once it accepts connections.
func TestDeadInstanceCostsOneConnectTimeout(t *testing.T) {
	const dialTimeout = 400 * time.Millisecond
	for _, proto := range []string{"http", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			var holes blackHole
			a, b := namedInstance(t, proto, "a"), namedInstance(t, proto, "b")
			holes.set(a, true)
			_, _, front := webMesh(t, func(c *upstream.Config) {
				c.Dialer = &net.Dialer{Timeout: dialTimeout, ControlContext: holes.control}
			}, upstreamtest.Instance(t, "web", "a", a), upstreamtest.Instance(t, "web", "b", b))
			ask := requester(t, proto, front)

			var slow []time.Duration
			for i := range 20 {
				start := time.Now()
				if got := ask(); got != "b" {
					t.Fatalf("request %d answered by %q, want b", i, got)
				}
				if d := time.Since(start); d >= dialTimeout {
					slow = append(slow, d)
				}
			}
			// Round-robin sends the first or second request to a; that one
			// waits the timeout and is retried on b, and no other waits.
			if len(slow) != 1 {
				t.Errorf("%d requests waited the connect timeout (%v), want exactly 1", len(slow), slow)
			}

			holes.set(a, false) // a accepts connections again
			deadline := time.Now().Add(5 * time.Second)
			for ask() != "a" {
				if time.Now().After(deadline) {
					t.Fatal("a was not readmitted within 5s of accepting connections again")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// namedInstance returns the address of an instance that answers with its
// name: in X-Instance for http, as the first bytes for tcp.
func namedInstance(t *testing.T, proto, name string) string {
	if proto == "http" {
		return upstreamtest.AddrOf(upstreamtest.BodyEcho(t, name))
	}
	return upstreamtest.TCPServer(t, func(c *net.TCPConn) { io.WriteString(c, name) })
}

// requester returns a function that makes one request of the kind proto
// through front and returns which instance answered.
func requester(t *testing.T, proto string, front *upstreamtest.Front) func() string {
	if proto == "http" {
		c := upstreamtest.Client(front)
		return func() string {
			_, _, h := upstreamtest.Do(t, c, http.MethodGet, "")
			return h.Get("X-Instance")
		}
	}
	// Raw TCP: a connection per request; the leading zero byte is no HTTP.
	return func() string {
		conn, err := net.DialTimeout("tcp", front.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "\x00"); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil {
			return fmt.Sprintf("error %v after %q", err, got)
		}
		return string(got)
	}
}
