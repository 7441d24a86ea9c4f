package intercept

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST from <linux/netfilter_ipv4.h>, which
// x/sys/unix does not name.
const soOriginalDst = 80

// OriginalDst returns the address the app connected to before our REDIRECT
// rule sent the connection to the listener that accepted c. It works for
// IPv4 only, and fails with a clear error when c was not redirected:
// either conntrack knows nothing of it, or the original destination is the
// listener itself (serving that would loop back into meshlet).
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	if c == nil {
		return netip.AddrPort{}, errors.New("reading original destination: nil connection")
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, errors.New("reading original destination: connection has no local TCP address (closed?)")
	}
	localAP := local.AddrPort()
	localAP = netip.AddrPortFrom(localAP.Addr().Unmap(), localAP.Port())
	if !localAP.Addr().Is4() {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s: only IPv4 is supported", localAP)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s: %w", localAP, err)
	}
	var (
		sa   *unix.IPv6Mreq // 16 bytes: the size of the sockaddr_in the kernel fills in
		serr error
	)
	if err := raw.Control(func(fd uintptr) {
		sa, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s: %w", localAP, err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s (was it redirected by iptables?): getsockopt SO_ORIGINAL_DST: %w", localAP, serr)
	}
	dst, err := parseSockaddrIn(sa.Multiaddr[:])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s: %w", localAP, err)
	}
	if dst == localAP {
		return netip.AddrPort{}, fmt.Errorf("reading original destination of connection to %s: it was not redirected (the original destination is the listener itself)", localAP)
	}
	return dst, nil
}

// parseSockaddrIn reads a struct sockaddr_in: family in host order, then
// port and address in network order.
func parseSockaddrIn(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, fmt.Errorf("sockaddr_in of %d bytes, want at least 8", len(b))
	}
	if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("original destination has address family %d, want AF_INET (%d)", fam, unix.AF_INET)
	}
	port := binary.BigEndian.Uint16(b[2:4])
	addr := netip.AddrFrom4([4]byte(b[4:8]))
	return netip.AddrPortFrom(addr, port), nil
}
