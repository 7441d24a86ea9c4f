package outbound

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

func TestTCPNonHTTPBytesGoThroughWithHalfClose(t *testing.T) {
	addr := upstreamtest.TCPServer(t, upstreamtest.Echo)
	_, _, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "echo", addr))

	for _, payload := range [][]byte{
		[]byte("\x00\x01\x02binary"),
		[]byte("SET key value\r\n"),                // a word and a space, but no HTTP method
		[]byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), // not quite the h2c preface
		[]byte("G"), // a method's start, then the client shuts its side
		bytes.Repeat([]byte("xyz"), 1<<20),
	} {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			conn.Write(payload)
			conn.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Errorf("%.20q: reading the echo: %v", payload, err)
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("%.20q: echo of %d bytes came back as %d bytes %.20q", payload, len(payload), len(got), got)
		}
	}
}

func TestTCPServerFirstProtocolWorksAfterSniffTimeout(t *testing.T) {
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		io.WriteString(c, "220 greetings\r\n")
		upstreamtest.Echo(c)
	})
	_, _, front := webMeshSniff(t, 100*time.Millisecond, nil, upstreamtest.Instance(t, "web", "smtp", addr))

	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting := make([]byte, len("220 greetings\r\n"))
	if _, err := io.ReadFull(conn, greeting); err != nil {
		t.Fatalf("waiting for the server's greeting: %v", err)
	}
	if string(greeting) != "220 greetings\r\n" {
		t.Errorf("greeting = %q", greeting)
	}
	io.WriteString(conn, "HELO me\r\n")
	reply := make([]byte, len("HELO me\r\n"))
	if _, err := io.ReadFull(conn, reply); err != nil || string(reply) != "HELO me\r\n" {
		t.Errorf("echo after the greeting = %q, %v", reply, err)
	}
}

func TestTCPDialFailureTriesTheOtherInstances(t *testing.T) {
	addr := upstreamtest.TCPServer(t, upstreamtest.Echo)
	_, _, front := webMesh(t, nil,
		upstreamtest.Instance(t, "web", "dead1", upstreamtest.DeadAddr(t)), upstreamtest.Instance(t, "web", "dead2", upstreamtest.DeadAddr(t)), upstreamtest.Instance(t, "web", "echo", addr))
	for i := range 3 {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write([]byte{0, byte(i)})
		conn.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(conn)
		conn.Close()
		if !bytes.Equal(got, []byte{0, byte(i)}) {
			t.Errorf("connection %d: echo = %q, want it to reach the live instance", i, got)
		}
	}
}

func TestTCPNoInstanceClosesTheConnection(t *testing.T) {
	_, _, front := webMesh(t, nil)
	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte{0})
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes from a service without instances, want the connection closed", n)
	}
}

func TestShutdownWaitsForTCPThenClosesBothSides(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		// Reads the app's request, then stays silent and open.
		io.Copy(io.Discard, c)
		<-release
	})
	_, m, front := webMesh(t, nil, upstreamtest.Instance(t, "web", "silent", addr))
	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{0})
	conn.(*net.TCPConn).CloseWrite()
	// Make sure the proxy reached the instance before shutting down.
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.Shutdown(ctx); err == nil {
		t.Error("Shutdown = nil with a raw connection still open, want the deadline error")
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Shutdown gave up after %v, before its ctx ended", d)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("app side after Shutdown: %v, want it closed", err)
	}
	// The proxy must not wait for the silent instance either.
	upstreamtest.Eventually(t, "ServeConn to return", func() bool { return front.Returned.Load() == 1 })
}
