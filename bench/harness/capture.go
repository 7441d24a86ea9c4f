package harness

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/integration/netlab"
)

// tcpWatch notes, from inside an instance's namespace, when TCP segments
// from one source reach one port: SYNs (connection attempts, which a killed
// instance still receives and answers with a reset) and segments that carry
// data (requests). It reads a packet socket on eth0, so it sees them whether
// or not anything listens, and it never changes the traffic.
type tcpWatch struct {
	fd   int
	from netip.Addr
	to   netip.AddrPort

	mu       sync.Mutex
	lastSeen time.Time // the last SYN or data segment
	seen     int
	stop     chan struct{}
	done     chan struct{}
}

// watchTCP starts a tcpWatch in host for segments from src to host's dst port.
func watchTCP(host *netlab.Host, src netip.Addr, port uint16) (*tcpWatch, error) {
	w := &tcpWatch{fd: -1, from: src, to: netip.AddrPortFrom(host.IP, port), stop: make(chan struct{}), done: make(chan struct{})}
	err := host.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_IP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding packet socket to eth0: %w", err)
		}
		tv := unix.Timeval{Usec: 50_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		w.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("watching tcp in %s: %w", host.Name, err)
	}
	go w.loop()
	return w, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (w *tcpWatch) loop() {
	defer close(w.done)
	defer unix.Close(w.fd)
	buf := make([]byte, 256) // headers are enough
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		now := time.Now()
		if w.matches(buf[:min(n, len(buf))], n) {
			w.mu.Lock()
			w.lastSeen = now
			w.seen++
			w.mu.Unlock()
		}
	}
}

// matches reports whether pkt (an IPv4 packet, possibly cut; whole is its
// full length) is a SYN or a data segment from w.from to w.to.
func (w *tcpWatch) matches(pkt []byte, whole int) bool {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_TCP {
		return false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+20 {
		return false
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	tcp := pkt[ihl:]
	dport := binary.BigEndian.Uint16(tcp[2:4])
	if src != w.from || dst != w.to.Addr() || dport != w.to.Port() {
		return false
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if total == 0 {
		total = whole
	}
	dataOff := int(tcp[12]>>4) * 4
	syn := tcp[13]&0x02 != 0
	return syn || total-ihl-dataOff > 0
}

// Close stops the watch and returns the time of the last matching segment
// (zero if none) and how many there were.
func (w *tcpWatch) Close() (time.Time, int) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastSeen, w.seen
}
