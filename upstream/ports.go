package upstream

import (
	"context"
	"net"
	"slices"
	"strconv"
	"time"
)

// Ports returns the distinct ports, ascending, of the instances a service
// (or subset, "tag.service") routes to now: for DNS SRV answers. It starts
// the service's watch and waits for Consul's first answer about it until
// ctx ends or Config.FirstAnswerTimeout passes; nil when no instance is
// known by then.
func (m *Mesh) Ports(ctx context.Context, name string) []uint16 {
	w := m.watch(name)
	w.awaitFirstAnswer(ctx, m.cfg.FirstAnswerTimeout)
	v := w.view.Load()
	if v == nil {
		return nil
	}
	set, _, _ := v.route(time.Now())
	if set == nil {
		set = v.all // none passing: still the ports Consul has
	}
	var ports []uint16
	for i := range set.Len() {
		// SRV gives Consul's port of the app (README), not the port of
		// the Connect sidecar an mTLS instance is dialled through.
		e := set.At(i)
		addr := e.Addr
		if e.MTLS {
			addr = e.AppAddr
		}
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			continue
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			continue
		}
		ports = append(ports, uint16(n))
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}
