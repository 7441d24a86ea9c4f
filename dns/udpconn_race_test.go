package dns

import (
	"errors"
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// replyThenFailConn: its Write hands the reader a matching reply (as a late
// duplicate of an earlier query with the same ID and question would) and
// then fails, as a send with a pending socket error does.
type replyThenFailConn struct {
	net.Conn
	c *sharedUDPConn
}

func (f *replyThenFailConn) Write(p []byte) (int, error) {
	r := append([]byte(nil), p...)
	r[2] |= 0x80
	f.c.deliver(r)
	return 0, errors.New("send failed")
}

func TestSendFailingAfterTheReplyCameStillReturnsTheReply(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	f := &replyThenFailConn{Conn: a}
	c := newSharedUDPConn(f)
	f.c = c
	defer c.close()
	m := new(mdns.Msg)
	m.SetQuestion("example.org.", mdns.TypeA)
	w := newWaiter()
	q, _ := m.Pack()
	w.query, w.buf = q, make([]byte, maxMsgLen)
	reply, err := c.exchange(w, time.Second, nil)
	// Either outcome is fine for the client (the reply, or an error that
	// fails over); (nil, nil) made forward panic and took the sidecar down.
	if err == nil && len(reply) < headerLen {
		t.Fatalf("exchange returned no reply and no error (%d bytes)", len(reply))
	}
}
