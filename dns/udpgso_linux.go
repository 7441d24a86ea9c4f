package dns

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gsoAvailable says whether the platform may have UDP GSO (UDP_SEGMENT,
// Linux 4.18); the first send that the kernel refuses turns it off.
const gsoAvailable = true

// gsoControl appends to b the control message that has the kernel cut one
// send into datagrams of size bytes each.
func gsoControl(b []byte, size int) []byte {
	n := unix.CmsgSpace(2)
	b = append(b[:0], make([]byte, n)...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b
}

// gsoRefused reports whether a failed GSO send says the kernel or the
// device cannot do GSO (rather than that the one client is unreachable).
func gsoRefused(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP)
}
