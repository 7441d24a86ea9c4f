package intercept

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MarkControl returns a net.Dialer / net.ListenConfig Control function that
// sets SO_MARK to mark on each socket before it connects, so that its
// packets skip our rules (Config.Mark). For mark 0 it returns nil: an
// unmarked socket needs no control. Setting a mark needs CAP_NET_ADMIN.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setMark(int(fd), mark) }); err != nil {
			return fmt.Errorf("setting socket mark 0x%x on %s socket for %s: %w", mark, network, address, err)
		}
		return serr
	}
}

// setMark sets SO_MARK on fd; the error names the mark and the privilege.
func setMark(fd int, mark uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("setting socket mark 0x%x: %w (needs CAP_NET_ADMIN)", mark, err)
	}
	return nil
}

// MarkedDialer returns a dialer whose connections carry mark and so are not
// redirected by our rules: meshlet uses it for its upstream connections and
// forwarded DNS queries. timeout is the dialer's connect timeout (0 = none
// beyond the context's).
func MarkedDialer(mark uint32, timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: MarkControl(mark)}
}

// CheckMark creates a throwaway socket and sets mark on it, so that start-up
// fails fast with a clear error when meshlet may not mark its sockets,
// instead of every later dial failing. Mark 0 needs no check.
func CheckMark(mark uint32) error {
	if mark == 0 {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("checking socket mark 0x%x: creating a socket: %w", mark, err)
	}
	defer unix.Close(fd)
	if err := setMark(fd, mark); err != nil {
		return fmt.Errorf("checking socket mark: %w", err)
	}
	return nil
}
