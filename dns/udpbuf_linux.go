package dns

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// setReadBuffer sizes the socket's receive buffer to n bytes. The kernel
// caps SO_RCVBUF at net.core.rmem_max (208 KiB by default, about 90 small
// queries); meshlet holds CAP_NET_ADMIN for its rules, which lets
// SO_RCVBUFFORCE go past the cap. Without it, the capped size is used.
func setReadBuffer(c *net.UDPConn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	if errors.Is(serr, syscall.EPERM) {
		return c.SetReadBuffer(n)
	}
	return serr
}
