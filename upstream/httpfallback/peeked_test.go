package httpfallback

import (
	"io"
	"net"
	"testing"
)

func TestPeekedConnReplaysFirst(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() { client.Write([]byte(" world")); client.Close() }()
	pc := &peekedConn{Conn: server, peeked: []byte("hello")}
	got, _ := io.ReadAll(pc)
	if string(got) != "hello world" {
		t.Errorf("read %q, want %q", got, "hello world")
	}
}
