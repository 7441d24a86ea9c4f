// Package metrics defines every Prometheus collector of meshlet in one
// place, on a registry that belongs to one agent (no global registry, no
// global state), and hands the parts of meshlet typed handles resolved once
// per service and per instance, so that recording a request costs a few
// atomic adds and allocates nothing.
//
// Label rules (DESIGN.md, "Metrics"): a service label only ever holds a
// Consul service name, an instance_id label a Consul service ID (not
// "instance", which Prometheus sets to the scraped target); no label ever
// holds a Host, a path or a client address. Per instance there are
// only counters; latency is a per-service histogram of at most 12 buckets.
//
// Every handle method is safe on a nil handle and does nothing, so code
// built without metrics (unit tests, tools) needs no special case.
package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// namespace prefixes every meshlet metric.
const namespace = "meshlet"

// LatencyBuckets are the upper bounds, in seconds, of the request latency
// histogram: a service network answers in milliseconds, and a request that
// takes 10 s has timed out somewhere. Twelve buckets (plus +Inf).
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}

// Status classes, the values of the class label of request counters.
var classes = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// Metrics owns one agent's registry and its collectors.
type Metrics struct {
	reg *prometheus.Registry

	requests       *prometheus.CounterVec   // service, class
	latency        *prometheus.HistogramVec // service
	retries        *prometheus.CounterVec   // service
	retriesRefused *prometheus.CounterVec   // service
	stickyRouted   *prometheus.CounterVec   // service
	stickyPins     *prometheus.CounterVec   // service
	stickyRepins   *prometheus.CounterVec   // service
	tcpOpened      *prometheus.CounterVec   // service
	tcpClosed      *prometheus.CounterVec   // service
	tcpBytes       *prometheus.CounterVec   // service, direction

	instRequests  *prometheus.CounterVec // service, instance
	instFailures  *prometheus.CounterVec // service, instance
	instEjections *prometheus.CounterVec // service, instance

	dnsQueries         *prometheus.CounterVec // kind
	dnsForwardFailures prometheus.Counter
	dns                DNS

	mtlsFailures [len(mtlsReasons)]prometheus.Counter // by reason

	mu       sync.Mutex
	services map[string]*Service
}

// New returns a Metrics with every collector registered on a registry of
// its own, together with the Go runtime's and the process's collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), services: map[string]*Service{}}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
		m.reg.MustRegister(v)
		return v
	}
	m.requests = counter("requests_total",
		"HTTP requests the app sent to a service, by the class of the status it got (meshlet's own answers included).", "service", "class")
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Time from a request's head to the end of its answer (retries included), per service.",
		Buckets: LatencyBuckets,
	}, []string{"service"})
	m.reg.MustRegister(m.latency)
	m.retries = counter("retries_total", "Attempts of HTTP requests sent again to another instance.", "service")
	m.retriesRefused = counter("retries_refused_total", "Retries that were safe and allowed but refused by the retry budget.", "service")
	m.stickyRouted = counter("sticky_routed_total", "Requests routed by a valid sticky cookie to the instance it names.", "service")
	m.stickyPins = counter("sticky_pins_total", "Sticky cookies set on answers to requests that had none (new pins).", "service")
	m.stickyRepins = counter("sticky_repins_total", "Sticky cookies replaced because the instance they named was gone, critical, ejected or failed (re-pins).", "service")
	m.tcpOpened = counter("tcp_connections_opened_total", "Raw TCP connections proxied to a service, opened.", "service")
	m.tcpClosed = counter("tcp_connections_closed_total", "Raw TCP connections proxied to a service, closed.", "service")
	m.tcpBytes = counter("tcp_bytes_total", "Bytes of raw TCP connections: direction sent (app to instance) or received (instance to app).", "service", "direction")
	m.instRequests = counter("instance_requests_total", "Attempts sent to an instance (HTTP requests and retries, raw TCP connections).", "service", "instance_id")
	m.instFailures = counter("instance_failures_total", "Attempts that failed at an instance (connect failures, resets, timeouts; 5xx when the service ejects on them).", "service", "instance_id")
	m.instEjections = counter("instance_ejections_total", "Times an instance was ejected by passive health.", "service", "instance_id")

	m.dnsQueries = counter("dns_queries_total",
		"DNS queries the app asked, by kind: mesh (answered from the mesh), nxdomain (unknown mesh name), forwarded (to the app's nameservers), servfail (meshlet could not answer).", "kind")
	m.dnsForwardFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "dns_forward_failures_total",
		Help: "Forwarded DNS queries that no nameserver answered (the app got SERVFAIL)."})
	m.reg.MustRegister(m.dnsForwardFailures)
	for k := range m.dns.kinds {
		m.dns.kinds[k] = m.dnsQueries.WithLabelValues(DNSKind(k).String())
	}
	m.dns.forwardFailures = m.dnsForwardFailures
	m.newMTLS()
	return m
}

// Registry is the registry to serve (promhttp.HandlerFor) and to add
// scrape-time collectors to.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Service returns the handles of a service, made at the first call; the
// caller keeps them where the service lives. name must be a Consul service
// name. A nil *Metrics gives a nil *Service, whose methods do nothing.
func (m *Metrics) Service(name string) *Service {
	if m == nil {
		return nil
	}
	name = strings.ToLower(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.services[name]; ok {
		return s
	}
	s := &Service{m: m, name: name, instances: map[string]*Instance{}}
	for i, c := range classes {
		s.byClass[i] = m.requests.WithLabelValues(name, c)
	}
	s.latency = m.latency.WithLabelValues(name)
	s.retries = m.retries.WithLabelValues(name)
	s.retriesRefused = m.retriesRefused.WithLabelValues(name)
	s.stickyRouted = m.stickyRouted.WithLabelValues(name)
	s.stickyPins = m.stickyPins.WithLabelValues(name)
	s.stickyRepins = m.stickyRepins.WithLabelValues(name)
	s.tcpOpened = m.tcpOpened.WithLabelValues(name)
	s.tcpClosed = m.tcpClosed.WithLabelValues(name)
	s.tcpSent = m.tcpBytes.WithLabelValues(name, "sent")
	s.tcpReceived = m.tcpBytes.WithLabelValues(name, "received")
	m.services[name] = s
	return s
}

// Service holds the pre-resolved series of one service.
type Service struct {
	m    *Metrics
	name string

	mu        sync.Mutex
	instances map[string]*Instance

	byClass        [len(classes)]prometheus.Counter
	latency        prometheus.Observer
	retries        prometheus.Counter
	retriesRefused prometheus.Counter
	stickyRouted   prometheus.Counter
	stickyPins     prometheus.Counter
	stickyRepins   prometheus.Counter
	tcpOpened      prometheus.Counter
	tcpClosed      prometheus.Counter
	tcpSent        prometheus.Counter
	tcpReceived    prometheus.Counter
}

// Request records one HTTP request answered with status after d. A
// status outside 100–599 counts as 5xx: the app got no proper answer.
func (s *Service) Request(status int, d time.Duration) {
	if s == nil {
		return
	}
	c := status/100 - 1
	if c < 0 || c >= len(classes) {
		c = len(classes) - 1
	}
	s.byClass[c].Inc()
	s.latency.Observe(d.Seconds())
}

// Retry records an attempt sent again to another instance.
func (s *Service) Retry() {
	if s != nil {
		s.retries.Inc()
	}
}

// RetryRefused records a retry the budget refused.
func (s *Service) RetryRefused() {
	if s != nil {
		s.retriesRefused.Inc()
	}
}

// StickyRouted records a request routed by a valid cookie.
func (s *Service) StickyRouted() {
	if s != nil {
		s.stickyRouted.Inc()
	}
}

// StickyPinned records a cookie set on the answer to a request that had
// none (repin false) or whose cookie named an instance it could not go to
// (repin true).
func (s *Service) StickyPinned(repin bool) {
	if s == nil {
		return
	}
	if repin {
		s.stickyRepins.Inc()
	} else {
		s.stickyPins.Inc()
	}
}

// TCPOpened records a raw TCP connection proxied to the service.
func (s *Service) TCPOpened() {
	if s != nil {
		s.tcpOpened.Inc()
	}
}

// TCPClosed records the end of a raw TCP connection and the bytes it
// carried each way.
func (s *Service) TCPClosed(sent, received int64) {
	if s == nil {
		return
	}
	s.tcpClosed.Inc()
	if sent > 0 {
		s.tcpSent.Add(float64(sent))
	}
	if received > 0 {
		s.tcpReceived.Add(float64(received))
	}
}

// Instance returns the counters of one instance of the service (id is its
// Consul service ID); the caller keeps them with the instance's state and
// calls ForgetInstance when the instance leaves Consul.
func (s *Service) Instance(id string) *Instance {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.instances[id]; ok {
		return i
	}
	i := &Instance{
		requests:  s.m.instRequests.WithLabelValues(s.name, id),
		failures:  s.m.instFailures.WithLabelValues(s.name, id),
		ejections: s.m.instEjections.WithLabelValues(s.name, id),
	}
	s.instances[id] = i
	return i
}

// ForgetInstance drops the series of an instance that left Consul, so
// that instances that come and go do not pile up series.
func (s *Service) ForgetInstance(id string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	delete(s.instances, id)
	s.mu.Unlock()
	s.m.instRequests.DeleteLabelValues(s.name, id)
	s.m.instFailures.DeleteLabelValues(s.name, id)
	s.m.instEjections.DeleteLabelValues(s.name, id)
}

// Instance holds the pre-resolved counters of one instance.
type Instance struct {
	requests, failures, ejections prometheus.Counter
}

// Attempt records a request (or raw connection) sent to the instance.
func (i *Instance) Attempt() {
	if i != nil {
		i.requests.Inc()
	}
}

// Failed records an attempt that failed at the instance.
func (i *Instance) Failed() {
	if i != nil {
		i.failures.Inc()
	}
}

// Ejected records an ejection of the instance.
func (i *Instance) Ejected() {
	if i != nil {
		i.ejections.Inc()
	}
}
