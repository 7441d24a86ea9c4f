// Command h1proto is a measuring stick, not a product: the smallest HTTP/1.1
// keep-alive forwarder Go allows (one goroutine per client connection, no
// net/http, pooled connections to the instances, round-robin), run by the
// benchmark harness as one more target of S1 and S2 ("go-minimal"). The
// gap between it and meshlet is what meshlet's HTTP path could win while
// staying in Go; the gap between it and nginx is what Go's runtime costs.
//
// It handles what the benchmark sends: requests without bodies or with a
// Content-Length, answers with a Content-Length or chunked. Anything else
// gets a 502 and a closed connection.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type upstream struct {
	addr string
	mu   sync.Mutex
	idle []*upConn
}

type upConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func (u *upstream) get() (*upConn, error) {
	u.mu.Lock()
	if n := len(u.idle); n > 0 {
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		return c, nil
	}
	u.mu.Unlock()
	c, err := net.DialTimeout("tcp", u.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}, nil
}

func (u *upstream) put(c *upConn) {
	u.mu.Lock()
	if len(u.idle) < 256 {
		u.idle = append(u.idle, c)
		c = nil
	}
	u.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
}

var (
	ups  []*upstream
	next atomic.Uint64
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18090", "address to serve on")
	to := flag.String("upstreams", "", "comma-separated instance addresses")
	life := flag.Duration("for", 4*time.Hour, "stop after this long")
	flag.Parse()
	for _, a := range strings.Split(*to, ",") {
		if a != "" {
			ups = append(ups, &upstream{addr: a})
		}
	}
	if len(ups) == 0 {
		log.Fatal("h1proto: -upstreams is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	time.AfterFunc(*life, func() { os.Exit(0) })
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c)
	}
}

var bufs = sync.Pool{New: func() any { return &connBufs{} }}

type connBufs struct {
	br  *bufio.Reader
	bw  *bufio.Writer
	hdr []byte
}

func serve(c net.Conn) {
	defer c.Close()
	b := bufs.Get().(*connBufs)
	if b.br == nil {
		b.br, b.bw = bufio.NewReaderSize(c, 4096), bufio.NewWriterSize(c, 4096)
	} else {
		b.br.Reset(c)
		b.bw.Reset(c)
	}
	defer bufs.Put(b)
	xff := []byte("X-Forwarded-For: " + hostOf(c.RemoteAddr().String()) + "\r\nX-Forwarded-Proto: http\r\n")
	for {
		if err := forward(b, xff); err != nil {
			if !errors.Is(err, io.EOF) {
				b.bw.WriteString("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				b.bw.Flush()
			}
			return
		}
	}
}

func hostOf(a string) string {
	h, _, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	return h
}

var errUnsupported = errors.New("unsupported message")

// forward proxies one request and its answer.
func forward(b *connBufs, xff []byte) error {
	u := ups[(next.Add(1)-1)%uint64(len(ups))]
	// Request head, straight into the instance connection's buffer.
	line, err := b.br.ReadSlice('\n')
	if err != nil {
		return io.EOF
	}
	uc, err := u.get()
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if ok {
			u.put(uc)
		} else {
			uc.c.Close()
		}
	}()
	uc.bw.Write(line)
	var reqLen int64
	for {
		h, err := b.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(h) <= 2 {
			break
		}
		if v, ok := header(h, "content-length"); ok {
			if reqLen, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return errUnsupported
			}
		} else if _, ok := header(h, "transfer-encoding"); ok {
			return errUnsupported
		} else if v, ok := header(h, "host"); ok {
			uc.bw.WriteString("X-Forwarded-Host: ")
			uc.bw.Write(v)
			uc.bw.WriteString("\r\n")
		}
		uc.bw.Write(h)
	}
	uc.bw.Write(xff)
	uc.bw.WriteString("\r\n")
	if reqLen > 0 {
		if _, err := io.CopyN(uc.bw, b.br, reqLen); err != nil {
			return err
		}
	}
	if err := uc.bw.Flush(); err != nil {
		return err
	}
	// Answer head and body, into the client's buffer.
	status, err := uc.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	b.bw.Write(status)
	respLen, chunked, closeAfter := int64(-1), false, false
	for {
		h, err := uc.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		b.bw.Write(h)
		if len(h) <= 2 {
			break
		}
		if v, ok := header(h, "content-length"); ok {
			if respLen, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return errUnsupported
			}
		} else if v, ok := header(h, "transfer-encoding"); ok {
			chunked = bytes.EqualFold(v, []byte("chunked"))
		} else if v, ok := header(h, "connection"); ok {
			closeAfter = bytes.EqualFold(v, []byte("close"))
		}
	}
	switch {
	case chunked:
		if err := copyChunked(b.bw, uc.br); err != nil {
			return err
		}
	case respLen >= 0:
		if _, err := io.CopyN(b.bw, uc.br, respLen); err != nil {
			return err
		}
	default:
		return errUnsupported
	}
	ok = !closeAfter
	return b.bw.Flush()
}

// header returns the value of h if it is the header name (any case).
func header(h []byte, name string) ([]byte, bool) {
	if len(h) < len(name)+1 || h[len(name)] != ':' || !strings.EqualFold(string(h[:len(name)]), name) {
		return nil, false
	}
	return bytes.TrimSpace(h[len(name)+1:]), true
}

func copyChunked(w *bufio.Writer, r *bufio.Reader) error {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		w.Write(line)
		size, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(string(line), ";", 2)[0]), 16, 64)
		if err != nil {
			return fmt.Errorf("chunk size: %w", err)
		}
		if size == 0 {
			for { // trailers, then the empty line
				t, err := r.ReadSlice('\n')
				if err != nil {
					return err
				}
				w.Write(t)
				if len(t) <= 2 {
					return nil
				}
			}
		}
		if _, err := io.CopyN(w, r, size+2); err != nil {
			return err
		}
	}
}
