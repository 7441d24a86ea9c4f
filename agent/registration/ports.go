package registration

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// tcpListenState is the "st" column of /proc/net/tcp for a listening socket.
const tcpListenState = "0A"

// ListeningSockets returns the addresses of the TCP listeners of the current
// network namespace, from /proc/net/tcp and /proc/net/tcp6. meshlet shares
// the app's namespace, so these are the app's listeners and meshlet's own.
func ListeningSockets() ([]netip.AddrPort, error) {
	var all []netip.AddrPort
	for _, f := range []struct {
		path string
		v6   bool
	}{{"/proc/net/tcp", false}, {"/proc/net/tcp6", true}} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			if f.v6 && errors.Is(err, fs.ErrNotExist) {
				continue // IPv6 disabled
			}
			return nil, fmt.Errorf("reading %s: %w", f.path, err)
		}
		socks, err := parseProcNetTCP(data, f.v6)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f.path, err)
		}
		all = append(all, socks...)
	}
	return all, nil
}

// parseProcNetTCP returns the local addresses of the listening sockets in
// the text of /proc/net/tcp (v6: /proc/net/tcp6). Addresses there are
// hexadecimal 32-bit words in the kernel's byte order; ports are big-endian
// hexadecimal.
func parseProcNetTCP(data []byte, v6 bool) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 512), 64<<10)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if f[3] != tcpListenState {
			continue
		}
		ap, err := parseHexAddrPort(f[1], v6)
		if err != nil {
			return nil, fmt.Errorf("local address %q: %w", f[1], err)
		}
		out = append(out, ap)
	}
	return out, sc.Err()
}

func parseHexAddrPort(s string, v6 bool) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, errors.New("no port")
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, errors.New("bad port")
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (v6 && len(raw) != 16) || (!v6 && len(raw) != 4) {
		return netip.AddrPort{}, errors.New("bad address")
	}
	// Each 32-bit word is printed as the number it is in memory.
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// appPorts picks, from the namespace's listeners, the ports callers could
// reach the app on: not loopback-only listeners (nobody outside can connect
// to those) and not meshlet's own ports. Sorted, without duplicates.
func appPorts(socks []netip.AddrPort, exclude []uint16) []int {
	var ports []int
	for _, s := range socks {
		if s.Addr().IsLoopback() || slices.Contains(exclude, s.Port()) || s.Port() == 0 {
			continue
		}
		if p := int(s.Port()); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}
