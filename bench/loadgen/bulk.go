package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// MaxBulk is the most bytes one bulk transfer may ask for (8 GiB), so a
// server never streams without end.
const MaxBulk = 8 << 30

// BulkResult is one bulk transfer.
type BulkResult struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Gbps    float64 `json:"gbit_per_s"`
}

// RunBulk connects to addr, asks for n bytes and reads them to the end.
// The request line starts with a lower-case word, so a sniffing proxy sees
// at once that it is not HTTP. The transfer gives up at the deadline.
func RunBulk(ctx context.Context, addr string, n int64, timeout time.Duration) (BulkResult, error) {
	if n <= 0 || n > MaxBulk {
		return BulkResult{}, fmt.Errorf("bulk: %d bytes: want 1..%d", n, int64(MaxBulk))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return BulkResult{}, fmt.Errorf("bulk: connecting to %s: %w", addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	if _, err := fmt.Fprintf(c, "bulk %d\n", n); err != nil {
		return BulkResult{}, fmt.Errorf("bulk: asking: %w", err)
	}
	buf := make([]byte, 256<<10)
	var got int64
	for got < n {
		k, err := c.Read(buf)
		got += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return BulkResult{}, fmt.Errorf("bulk: reading after %d of %d bytes: %w", got, n, err)
		}
	}
	secs := time.Since(start).Seconds()
	if got != n {
		return BulkResult{}, fmt.Errorf("bulk: got %d of %d bytes", got, n)
	}
	return BulkResult{Bytes: got, Seconds: secs, Gbps: float64(got) * 8 / secs / 1e9}, nil
}

// ServeBulk answers "bulk N\n" with N bytes on every connection of ln
// until ctx ends. Each connection is bounded by MaxBulk and by idle.
func ServeBulk(ctx context.Context, ln net.Listener, idle time.Duration) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = 'a' + byte(i%26)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serveBulkConn(c, chunk, idle)
	}
}

func serveBulkConn(c net.Conn, chunk []byte, idle time.Duration) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(idle))
	line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "bulk" {
		fmt.Fprintf(c, "want: bulk N\n")
		return
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n <= 0 || n > MaxBulk {
		fmt.Fprintf(c, "N must be 1..%d\n", int64(MaxBulk))
		return
	}
	for n > 0 {
		k := min(n, int64(len(chunk)))
		c.SetWriteDeadline(time.Now().Add(idle))
		if _, err := c.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}
