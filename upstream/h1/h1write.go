package h1

import (
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/upstream"
)

// What the forwarder writes: the head for the instance, the head for the
// app, the mesh's own answers, and the end of an app connection.

// buildOut writes the head for the instance into s.out: the request line,
// the Host the app used (or the name it resolved), the app's fields but
// the hop-by-hop and forwarding ones, the framing, and X-Forwarded-*.
func (s *h1conn) buildOut() {
	r := &s.req
	b := s.out[:0]
	b = append(b, r.method...)
	b = append(b, ' ')
	b = append(b, r.target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	host := r.host
	if len(host) == 0 {
		// Not appended to r.host: it aliases the read buffer.
		host = []byte(s.host)
	}
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for i := range r.fields {
		f := &r.fields[i]
		switch f.kind {
		case fieldOther, fieldCookie:
			b = append(b, f.line...)
		case fieldTrailer:
			if r.chunked {
				b = append(b, f.line...)
			}
		}
	}
	if r.contentLength >= 0 {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, r.contentLength, 10)
		b = append(b, "\r\n"...)
	}
	if r.chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if r.teTrailers {
		b = append(b, "Te: trailers\r\n"...)
	}
	// The app may itself be a proxy: keep the chain it sends and add it.
	b = append(b, "X-Forwarded-For: "...)
	for i := range r.fields {
		if f := &r.fields[i]; f.kind == fieldXFF {
			b = append(b, f.value...)
			b = append(b, ", "...)
		}
	}
	b = append(b, s.xff...)
	b = append(b, "\r\nX-Forwarded-Host: "...)
	b = append(b, host...)
	b = append(b, "\r\nX-Forwarded-Proto: http\r\n"...)
	if s.addID {
		b = append(b, upstream.RequestIDHeader+": "...)
		b = append(b, s.outcome.RequestID...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	s.out = b
}

// writeRespHead writes an answer head to the app: its status line with
// our HTTP version, its fields but the hop-by-hop ones, and (final heads,
// final == 1) the framing, the sticky cookie and Connection: close.
// chunk: the body, delimited by the instance's close, is sent in chunks.
func (s *h1conn) writeRespHead(rh *head, cookie *string, final int, chunk, closeApp bool) {
	w := s.bw
	w.WriteString("HTTP/1.1")
	w.Write(rh.target)
	w.WriteString("\r\n")
	for i := range rh.fields {
		f := &rh.fields[i]
		switch f.kind {
		case fieldOther, fieldSetCookie:
			w.Write(f.line)
		case fieldTrailer:
			if rh.chunked {
				w.Write(f.line)
			}
		}
	}
	if final == 0 {
		w.WriteString("\r\n")
		return
	}
	if rh.contentLength >= 0 {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(s.num[:0], rh.contentLength, 10))
		w.WriteString("\r\n")
	} else if rh.chunked || chunk {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if cookie != nil && *cookie != "" {
		w.WriteString("Set-Cookie: ")
		w.WriteString(*cookie)
		w.WriteString("\r\n")
	}
	if closeApp {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
}

// answer writes a one-line text answer from the mesh itself, as
// writeError does on the net/http path, and reports whether the
// connection goes on.
func (s *h1conn) answer(status int, code, msg string, closeApp bool) bool {
	s.outcome.Status, s.outcome.Code = status, code
	if s.method != "HEAD" {
		s.outcome.BytesOut = int64(len(msg) + 1)
	}
	closeApp = closeApp || s.live.IsDraining()
	w := s.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(status))
	w.WriteString(" ")
	w.WriteString(http.StatusText(status))
	w.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nX-Meshlet-Error: ")
	w.WriteString(code)
	w.WriteString("\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(msg) + 1))
	w.WriteString("\r\n")
	if closeApp {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if s.method != "HEAD" {
		w.WriteString(msg)
		w.WriteString("\n")
	}
	if err := w.Flush(); err != nil {
		return false
	}
	if closeApp {
		s.closeWrite()
	}
	return !closeApp
}

// closeWrite ends the answers on the app's connection before it closes.
// What the app sends meanwhile (the rest of a request body, requests it
// pipelined) is read and dropped for a moment: closing a socket with
// unread bytes resets it, and the reset destroys what of the answer the
// app has not received yet. The moment ends once the app has received all
// of it (at once when it has), or lingerTime.
func (s *h1conn) closeWrite() {
	cw, ok := s.c.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		return
	}
	s.c.SetReadDeadline(time.Now().Add(lingerTime))
	s.idleUntil = time.Time{}
	buf := s.rd.buf // the connection ends: what it holds is no longer needed
	for {
		// Not a socket (-1: cannot be told): drained, as before, only
		// while a request body may still come.
		if n := unacked(s.c); n == 0 || (n < 0 && s.body.done()) {
			return
		}
		if _, err := s.c.Read(buf); err != nil {
			return
		}
	}
}

// unacked is how many bytes written to c its peer has not acknowledged
// yet; -1 when it cannot be told.
func unacked(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}
