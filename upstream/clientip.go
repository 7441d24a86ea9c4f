package upstream

import (
	"net"
	"net/netip"
)

// The address a request's X-Forwarded-For names for the app, for the
// HTTP front-ends: which address stands for the app is the mesh's
// business (Config.ClientAddr), how it is written into a head theirs.

// AppendClientIP appends the address X-Forwarded-For names for the app on
// a connection from remote: Config.ClientAddr when the connection comes
// over loopback (as the app's intercepted ones do) and it is set, else
// the connection's own. No allocation for TCP connections.
func (m *Mesh) AppendClientIP(b []byte, remote net.Addr) []byte {
	ta, ok := remote.(*net.TCPAddr)
	if !ok {
		return append(b, hostOnly(remote)...)
	}
	if m.cfg.clientXFF != "" && ta.IP.IsLoopback() {
		return append(b, m.cfg.clientXFF...)
	}
	return ta.AddrPort().Addr().Unmap().AppendTo(b)
}

// ClientIP is AppendClientIP for a request's RemoteAddr ("host:port"), as
// net/http gives it.
func (m *Mesh) ClientIP(remoteAddr string) string {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		host, _, err := net.SplitHostPort(remoteAddr)
		if err != nil {
			return ""
		}
		return host
	}
	if m.cfg.clientXFF != "" && ap.Addr().Unmap().IsLoopback() {
		return m.cfg.clientXFF
	}
	return ap.Addr().Unmap().String()
}

// hostOnly is the IP of an address, as X-Forwarded-For wants it.
func hostOnly(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
