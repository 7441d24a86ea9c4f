package agent

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/meshlet/meshlet/agent/registration"
)

// clientAddr is the address X-Forwarded-For names for the app (see
// upstream.Config.ClientAddr): the app reaches meshlet over loopback, so
// the address of its connections says nothing. In order: the address the
// app is registered with; the --advertise-addr template, evaluated here
// even when nothing is registered (a failure is no error then); the
// namespace's primary address. None: the zero Addr, and 127.0.0.1 stays.
func clientAddr(cfg Config, log *slog.Logger) netip.Addr {
	if cfg.Advertise.IsValid() {
		log.Info("X-Forwarded-For names the app by its registered address", "addr", cfg.Advertise)
		return cfg.Advertise
	}
	if a, err := registration.Address(cfg.AdvertiseAddr); err == nil {
		log.Info("X-Forwarded-For names the app by its advertise address", "addr", a)
		return a
	}
	ifaces, err := interfaceAddrs()
	if err != nil {
		log.Warn("X-Forwarded-For names the app 127.0.0.1: listing the interfaces failed", "err", err)
		return netip.Addr{}
	}
	a := primaryAddr(ifaces)
	if !a.IsValid() {
		log.Warn("X-Forwarded-For names the app 127.0.0.1: no up interface has a global unicast address")
		return a
	}
	log.Info("X-Forwarded-For names the app by the namespace's primary address", "addr", a)
	return a
}

// ifaceAddrs is what primaryAddr needs of an interface.
type ifaceAddrs struct {
	up, loopback bool
	addrs        []netip.Prefix
}

func interfaceAddrs() ([]ifaceAddrs, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]ifaceAddrs, 0, len(ifaces))
	for _, ifc := range ifaces {
		ia := ifaceAddrs{up: ifc.Flags&net.FlagUp != 0, loopback: ifc.Flags&net.FlagLoopback != 0}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue // gone meanwhile
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(n.String()); err == nil {
					ia.addrs = append(ia.addrs, p)
				}
			}
		}
		out = append(out, ia)
	}
	return out, nil
}

// primaryAddr is the namespace's primary address: the first global
// unicast address (private ones included, link-local ones not) of an up
// interface other than loopback, in the kernel's order of interfaces;
// IPv4 first, as a container's eth0 has one.
func primaryAddr(ifaces []ifaceAddrs) netip.Addr {
	var v6 netip.Addr
	for _, ifc := range ifaces {
		if !ifc.up || ifc.loopback {
			continue
		}
		for _, p := range ifc.addrs {
			a := p.Addr().Unmap()
			if !a.IsGlobalUnicast() || a.IsLoopback() {
				continue
			}
			if a.Is4() {
				return a
			}
			if !v6.IsValid() {
				v6 = a.WithZone("")
			}
		}
	}
	return v6
}
