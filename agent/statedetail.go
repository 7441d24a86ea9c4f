package agent

import (
	"github.com/meshlet/meshlet/metrics"
)

// stateInstance is what /v1/state shows of one instance of a service.
type stateInstance struct {
	ID     string `json:"id"`
	Node   string `json:"node,omitempty"`
	Addr   string `json:"addr"`
	Status string `json:"status"` // in Consul: passing, warning, critical
	// Ejected is true while passive health keeps the instance out;
	// EjectedForSeconds is how much longer.
	Ejected           bool    `json:"ejected,omitempty"`
	EjectedForSeconds float64 `json:"ejected_for_seconds,omitempty"`
	InFlight          int64   `json:"in_flight"`
	// Counters since meshlet first saw the instance.
	Requests  uint64 `json:"requests"`
	Failures  uint64 `json:"failures"`
	Ejections uint64 `json:"ejections"`
}

// stateConsul is how fresh meshlet's view of Consul is.
type stateConsul struct {
	// SinceAnswerSeconds is how long Consul has not answered (0 while it
	// answers).
	SinceAnswerSeconds float64 `json:"since_answer_seconds"`
	FailStatic         bool    `json:"fail_static"`
	WatchErrors        uint64  `json:"watch_errors"`
}

// addServiceDetail adds the instances and counters of a service.
func (a *Agent) addServiceDetail(s *stateService) {
	ms := a.metrics.Lookup(s.Name)
	if ms != nil {
		c := ms.Counts()
		s.Counters = &c
	}
	counts := map[string]metrics.InstanceCounts{}
	for _, c := range ms.InstanceCounts() {
		counts[c.ID] = c
	}
	for _, in := range a.mesh.Instances(s.Name) {
		c := counts[in.ID]
		s.Instances = append(s.Instances, stateInstance{
			ID: in.ID, Node: in.Node, Addr: in.Addr, Status: in.Status,
			Ejected: in.EjectedFor > 0, EjectedForSeconds: in.EjectedFor.Seconds(), InFlight: in.InFlight,
			Requests: c.Requests, Failures: c.Failures, Ejections: c.Ejections,
		})
	}
}

func (a *Agent) stateConsul() *stateConsul {
	cs := a.consulState()
	return &stateConsul{SinceAnswerSeconds: cs.SinceAnswer.Seconds(), FailStatic: cs.FailStatic, WatchErrors: cs.WatchErrors}
}
