package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// BenchmarkForwarderUpload16MiB is one 16 MiB request body through the
// forwarder to an instance that reads it, on a keep-alive connection.
func BenchmarkForwarderUpload16MiB(b *testing.B) {
	const n = 16 << 20
	addr := upstreamtest.TCPServer(b, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, _, front := webMesh(b, nil, upstreamtest.Instance(b, "web", "a", addr))
	c, err := net.Dial("tcp", front.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := make([]byte, n)
	head := []byte(fmt.Sprintf("POST /up HTTP/1.1\r\nHost: web.local\r\nContent-Length: %d\r\n\r\n", n))
	b.SetBytes(n)
	for b.Loop() {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(head)
		c.Write(body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}
