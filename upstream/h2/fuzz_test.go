package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// panicLog records the log lines that tell of a panic in the server.
type panicLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *panicLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *panicLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") && !strings.Contains(r.Message, "abort Handler") {
		l.mu.Lock()
		l.lines = append(l.lines, r.Message)
		l.mu.Unlock()
	}
	return nil
}
func (l *panicLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *panicLog) WithGroup(string) slog.Handler      { return l }

// frames encodes HTTP/2 frames as an app would send them after the
// preface: its settings, then one request per header list (a body when
// the list ends with ":body").
func frames(t testing.TB, requests ...[]string) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i, fields := range requests {
		hb.Reset()
		var body string
		for j := 0; j+1 < len(fields); j += 2 {
			if fields[j] == ":body" {
				body = fields[j+1]
				continue
			}
			enc.WriteField(hpack.HeaderField{Name: fields[j], Value: fields[j+1]})
		}
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: body == ""}); err != nil {
			t.Fatal(err)
		}
		if body != "" {
			fr.WriteData(id, true, []byte(body))
		}
	}
	return buf.Bytes()
}

// FuzzServeAppInput feeds what follows the HTTP/2 preface on an app's
// connection to the front-end, with an instance behind it: whatever the
// app sends, the connection ends once the app has closed its side, and
// nothing panics.
func FuzzServeAppInput(f *testing.F) {
	get := []string{":method", "GET", ":scheme", "http", ":authority", "web.local", ":path", "/"}
	call := []string{":method", "POST", ":scheme", "http", ":authority", "web.local", ":path", "/grpc.testing.TestService/UnaryCall",
		"content-type", "application/grpc", "te", "trailers", "grpc-timeout", "1S", ":body", "\x00\x00\x00\x00\x00"}
	for _, seed := range [][]byte{
		frames(f, get),
		frames(f, get, call, get),
		frames(f, call),
		frames(f, []string{":method", "CONNECT", ":authority", "web.local:80"}),
		frames(f, append(get[:len(get):len(get)], "transfer_encoding", "chunked")),
		frames(f, append(get[:len(get):len(get)], "grpc-timeout", "99999999H", "content-type", "application/grpc+proto")),
		[]byte("\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
		[]byte("garbage"),
		{},
	} {
		f.Add(seed)
	}
	log := &panicLog{}
	inst := upstreamtest.WhoAmI(f, "a")
	fc := upstreamtest.NewFakeConsul(f)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, upstreamtest.Instance(f, "web", "a", upstreamtest.AddrOf(inst)))
	// Logging to log, not to f, which a fuzz target must not use: net/http
	// tells of a handler's panic in the server's log.
	m := upstreamtest.NewMesh(f, fc, func(cfg *upstream.Config) { cfg.Logger = slog.New(log) })
	s := New(m)
	s.server.ErrorLog = slog.NewLogLogger(log, slog.LevelError)
	tgt := m.Target("web", "web.local")
	front := upstreamtest.Serve(f, func(ctx context.Context, c net.Conn) { s.Serve(ctx, c, nil, tgt) })
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})

	f.Fuzz(func(t *testing.T, input []byte) {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			conn.Write(append([]byte(http2.ClientPreface), input...))
			conn.(*net.TCPConn).CloseWrite()
		}()
		// The server ends it with a FIN or, for an app that broke the
		// protocol, a reset; only a connection left open is a failure.
		if _, err := io.Copy(io.Discard, conn); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the connection did not end after the app's input: %v", err)
		}
		log.mu.Lock()
		defer log.mu.Unlock()
		if len(log.lines) > 0 {
			t.Fatalf("the server panicked: %q", log.lines)
		}
	})
}
