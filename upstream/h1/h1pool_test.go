package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// TestH1UnsolicitedBytesOnAnIdleConnNeverReachAnotherApp: bytes an
// instance sends on a pooled connection while no request is on it (here a
// body after a HEAD answer, late) are never taken for the next request's
// answer, whatever its method.
func TestH1UnsolicitedBytesOnAnIdleConnNeverReachAnotherApp(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			addr, conns := upstreamtest.RawInstance(t, func(c *net.TCPConn, br *bufio.Reader) {
				for {
					req, _, err := upstreamtest.ReadRequest(br)
					if err != nil {
						return
					}
					if req.Method == "HEAD" {
						inner := "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET"
						fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(inner))
						time.Sleep(50 * time.Millisecond)
						io.WriteString(c, inner) // a body for HEAD, as a buggy handler sends
						continue
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			})
			front := oneInstanceMesh(t, addr)
			a := upstreamtest.DialApp(t, front)
			a.Send("HEAD /x HTTP/1.1\r\nHost: web.local\r\n\r\n")
			a.Read("HEAD")
			time.Sleep(200 * time.Millisecond)
			b := upstreamtest.DialApp(t, front) // another app
			b.Send(method + " /mine HTTP/1.1\r\nHost: web.local\r\nContent-Length: 0\r\n\r\n")
			if _, body := b.Read(method); body != "ok" {
				t.Errorf("%s /mine got %q, another request's bytes; want ok", method, body)
			}
			if n := conns.Load(); n != 2 {
				t.Errorf("%d instance connections, want 2 (the dirty one dropped)", n)
			}
		})
	}
}

// TestH1PoolOfBusyConnectionsOutlivesTheReaper: a pool whose connections
// are all in use when the reaper runs still takes them back: they are
// reused, reaped and closed at Shutdown, never leaked.
func TestH1PoolOfBusyConnectionsOutlivesTheReaper(t *testing.T) {
	closed := make(chan struct{})
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
		close(closed)
	})
	u := newUpPools(plainDial)
	u.idleTimeout = 300 * time.Millisecond // the reaper runs every 100ms
	p := u.pool(addr)                      // a request begins
	uc, err := u.open(t.Context(), addr, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond) // the reaper runs meanwhile
	u.put(p, uc)                       // the answer was read whole
	u.release(p)
	p2 := u.pool(addr)
	if got := u.get(p2); got != uc {
		t.Error("the connection just put back cannot be had again")
	} else {
		u.put(p2, got)
	}
	u.release(p2)
	u.close() // Shutdown
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Error("Shutdown left the pooled connection open: leaked")
	}
}

// TestH1ReaperClosesIdleConnections: a connection idle past its time is
// closed by the reaper, and its pool then forgotten.
func TestH1ReaperClosesIdleConnections(t *testing.T) {
	closed := make(chan struct{})
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
		close(closed)
	})
	u := newUpPools(plainDial)
	defer u.close()
	u.idleTimeout = 150 * time.Millisecond
	p := u.pool(addr)
	uc, err := u.open(t.Context(), addr, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	u.put(p, uc)
	u.release(p)
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("an idle connection outlived its idle timeout")
	}
	upstreamtest.Eventually(t, "the empty pool forgotten", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.pools) == 0
	})
}

// plainDial dials as a Mesh without Config.Dialer does.
func plainDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
