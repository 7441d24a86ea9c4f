package intercept

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMarkControlZeroIsNil(t *testing.T) {
	if MarkControl(0) != nil {
		t.Errorf("MarkControl(0) != nil: an unmarked dialer needs no control")
	}
	if d := MarkedDialer(0, time.Second); d.Control != nil || d.Timeout != time.Second {
		t.Errorf("MarkedDialer(0, 1s) = %+v, want no Control and a 1s timeout", d)
	}
	if err := CheckMark(0); err != nil {
		t.Errorf("CheckMark(0) = %v, want nil", err)
	}
}

// TestMarkedDialerMarksSocket dials a loopback listener and reads SO_MARK
// back from the dialed socket. Setting a mark needs CAP_NET_ADMIN; without
// it the dial must fail with the documented error instead.
func TestMarkedDialerMarksSocket(t *testing.T) {
	const mark = 0x1e
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := MarkedDialer(mark, 5*time.Second).DialContext(ctx, "tcp", ln.Addr().String())
	if os.Geteuid() != 0 {
		if err == nil || !strings.Contains(err.Error(), "setting socket mark 0x1e") || !errors.Is(err, syscall.EPERM) {
			t.Fatalf("dial without CAP_NET_ADMIN = %v, want a socket mark EPERM error", err)
		}
		if err := CheckMark(mark); err == nil || !strings.Contains(err.Error(), "setting socket mark 0x1e") {
			t.Fatalf("CheckMark without CAP_NET_ADMIN = %v, want a socket mark error", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("marked dial: %v", err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil || got != mark {
		t.Errorf("SO_MARK of dialed socket = %#x, %v; want %#x", got, gerr, mark)
	}
	if err := CheckMark(mark); err != nil {
		t.Errorf("CheckMark as root = %v, want nil", err)
	}
}
