package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ConsulState is meshlet's view of Consul, read at scrape time.
type ConsulState struct {
	// SinceAnswer is how long Consul has not answered: 0 while it answers
	// (blocking queries return or time out normally), the age of the last
	// good data while it does not (fail-static).
	SinceAnswer time.Duration
	// FailStatic is true while meshlet routes on its last good instances
	// because Consul does not answer.
	FailStatic bool
	// WatchErrors counts failed queries of meshlet's Consul watches since
	// start (monotonic).
	WatchErrors uint64
}

// Registration is the state of one service of the app that meshlet
// registers, read at scrape time.
type Registration struct {
	Service    string // its Consul service name
	Status     string // passing, warning or critical
	Registered bool   // Consul has it
}

// ServiceState is what a scrape reports of one routed service.
type ServiceState struct {
	Service string // its Consul service name
	Passing int    // instances passing their checks
	Ejected int    // of those, ejected by passive health right now
}

// WatchServices makes every scrape report states()'s answer as
// meshlet_instances_passing and meshlet_instances_ejected. Call it once.
func (m *Metrics) WatchServices(states func() []ServiceState) {
	m.reg.MustRegister(&scrapeCollector{
		descs: []*prometheus.Desc{instancesPassingDesc, instancesEjectedDesc},
		collect: func(ch chan<- prometheus.Metric) {
			for _, s := range states() {
				ch <- prometheus.MustNewConstMetric(instancesPassingDesc, prometheus.GaugeValue, float64(s.Passing), s.Service)
				ch <- prometheus.MustNewConstMetric(instancesEjectedDesc, prometheus.GaugeValue, float64(s.Ejected), s.Service)
			}
		},
	})
}

var registrationStatuses = [...]string{"passing", "warning", "critical"}

// WatchConsul makes every scrape report state()'s answer as
// meshlet_consul_last_answer_age_seconds, meshlet_consul_fail_static and
// meshlet_consul_watch_errors_total. Call it once.
func (m *Metrics) WatchConsul(state func() ConsulState) {
	m.reg.MustRegister(&scrapeCollector{
		descs: []*prometheus.Desc{consulAgeDesc, consulFailStaticDesc, consulWatchErrorsDesc},
		collect: func(ch chan<- prometheus.Metric) {
			st := state()
			ch <- prometheus.MustNewConstMetric(consulAgeDesc, prometheus.GaugeValue, st.SinceAnswer.Seconds())
			ch <- prometheus.MustNewConstMetric(consulFailStaticDesc, prometheus.GaugeValue, boolValue(st.FailStatic))
			ch <- prometheus.MustNewConstMetric(consulWatchErrorsDesc, prometheus.CounterValue, float64(st.WatchErrors))
		},
	})
}

// WatchRegistrations makes every scrape report the app's registrations
// as meshlet_registration_status and meshlet_registration_registered.
// Call it once.
func (m *Metrics) WatchRegistrations(states func() []Registration) {
	m.reg.MustRegister(&scrapeCollector{
		descs: []*prometheus.Desc{registrationStatusDesc, registrationRegisteredDesc},
		collect: func(ch chan<- prometheus.Metric) {
			for _, r := range states() {
				for _, s := range registrationStatuses {
					ch <- prometheus.MustNewConstMetric(registrationStatusDesc, prometheus.GaugeValue, boolValue(r.Status == s), r.Service, s)
				}
				ch <- prometheus.MustNewConstMetric(registrationRegisteredDesc, prometheus.GaugeValue, boolValue(r.Registered), r.Service)
			}
		},
	})
}

var (
	consulAgeDesc = prometheus.NewDesc(namespace+"_consul_last_answer_age_seconds",
		"Seconds since Consul last answered meshlet's watches; 0 while it answers.", nil, nil)
	consulFailStaticDesc = prometheus.NewDesc(namespace+"_consul_fail_static",
		"1 while meshlet routes on its last good instances because Consul does not answer (fail-static), else 0.", nil, nil)
	consulWatchErrorsDesc = prometheus.NewDesc(namespace+"_consul_watch_errors_total",
		"Failed queries of meshlet's Consul watches (catalog and services).", nil, nil)
	instancesPassingDesc = prometheus.NewDesc(namespace+"_instances_passing",
		"Instances of a service passing their checks in Consul (or kept by fail-static).", []string{"service"}, nil)
	instancesEjectedDesc = prometheus.NewDesc(namespace+"_instances_ejected",
		"Instances of a service ejected by passive health right now.", []string{"service"}, nil)
	registrationStatusDesc = prometheus.NewDesc(namespace+"_registration_status",
		"The check state of each service of the app that meshlet registers: 1 for its current status, 0 for the others.", []string{"service", "status"}, nil)
	registrationRegisteredDesc = prometheus.NewDesc(namespace+"_registration_registered",
		"1 when Consul has the app's service registered, else 0.", []string{"service"}, nil)
)

// scrapeCollector computes its metrics at scrape time.
type scrapeCollector struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
