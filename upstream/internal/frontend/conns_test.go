package frontend

import (
	"net"
	"testing"
)

// TestLiveConnDetachesTheInstanceConnBeforeItIsPooled: once detached, an
// instance connection (pooled next, maybe another request's) is out of
// reach of the app connection's Close; detaching after a Close says so,
// so that it is not pooled.
func TestLiveConnDetachesTheInstanceConnBeforeItIsPooled(t *testing.T) {
	app, up := &closeCounter{}, &closeCounter{}
	l := NewLiveConn(app)
	if !l.SetUp(up) {
		t.Fatal("SetUp on an open connection failed")
	}
	if l.Detach() {
		t.Error("Detach says closed before any Close")
	}
	l.Close()
	if up.n != 0 {
		t.Error("Close reached an instance connection already detached")
	}
	l2 := NewLiveConn(&closeCounter{})
	l2.SetUp(&closeCounter{})
	l2.Close()
	if !l2.Detach() {
		t.Error("Detach after Close does not say closed: the connection would be pooled")
	}
}

type closeCounter struct {
	net.Conn
	n int
}

func (c *closeCounter) Close() error { c.n++; return nil }
