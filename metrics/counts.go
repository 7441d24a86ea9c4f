package metrics

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// ServiceCounts are a service's counters since start, for /v1/state and
// `meshlet status` (not for the hot path: reading them costs a copy).
type ServiceCounts struct {
	Requests       uint64            `json:"requests"`
	ByClass        map[string]uint64 `json:"by_class,omitempty"`
	Retries        uint64            `json:"retries"`
	RetriesRefused uint64            `json:"retries_refused"`
	StickyRouted   uint64            `json:"sticky_routed"`
	StickyPins     uint64            `json:"sticky_pins"`
	StickyRepins   uint64            `json:"sticky_repins"`
	TCPOpened      uint64            `json:"tcp_opened"`
	TCPClosed      uint64            `json:"tcp_closed"`
}

// InstanceCounts are an instance's counters since it was first seen.
type InstanceCounts struct {
	ID        string `json:"id"`
	Requests  uint64 `json:"requests"`
	Failures  uint64 `json:"failures"`
	Ejections uint64 `json:"ejections"`
}

// Counts reads the service's counters.
func (s *Service) Counts() ServiceCounts {
	var c ServiceCounts
	if s == nil {
		return c
	}
	for i, cl := range classes {
		if n := value(s.byClass[i]); n > 0 {
			if c.ByClass == nil {
				c.ByClass = map[string]uint64{}
			}
			c.ByClass[cl] = n
			c.Requests += n
		}
	}
	c.Retries = value(s.retries)
	c.RetriesRefused = value(s.retriesRefused)
	c.StickyRouted = value(s.stickyRouted)
	c.StickyPins = value(s.stickyPins)
	c.StickyRepins = value(s.stickyRepins)
	c.TCPOpened = value(s.tcpOpened)
	c.TCPClosed = value(s.tcpClosed)
	return c
}

// InstanceCounts reads the counters of the service's instances, sorted
// by ID.
func (s *Service) InstanceCounts() []InstanceCounts {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	out := make([]InstanceCounts, 0, len(s.instances))
	for id, i := range s.instances {
		out = append(out, InstanceCounts{ID: id, Requests: value(i.requests), Failures: value(i.failures), Ejections: value(i.ejections)})
	}
	s.mu.Unlock()
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// Lookup returns the handles of a service if they were made, else nil.
func (m *Metrics) Lookup(name string) *Service {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.services[name]
}

func value(c prometheus.Counter) uint64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}
