package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/meshlet/meshlet/agent/registration"
	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/metrics"
)

// startAdmin binds the admin listener and serves /healthz, /readyz,
// /v1/state and /metrics on it.
func (a *Agent) startAdmin() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.cfg.AdminListen.String())
	if err != nil {
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	mux.HandleFunc("GET /v1/state", a.handleState)
	mux.Handle("GET /metrics", a.metricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}

// notReady lists what keeps meshlet from being ready; empty means ready.
func (a *Agent) notReady() []string {
	var why []string
	if a.stopping.Load() {
		why = append(why, "stopping")
	}
	if !a.listening.Load() {
		why = append(why, "listeners: not bound yet")
	}
	if !a.rulesUp.Load() {
		why = append(why, "iptables rules: not installed yet")
	} else if a.rules != nil {
		if err := a.rules.Verify(); err != nil {
			why = append(why, "iptables rules: "+err.Error())
		}
	}
	if ok, reason := a.mesh.CatalogReady(); !ok {
		why = append(why, "consul: "+reason)
	}
	why = append(why, a.certsNotReady()...)
	why = append(why, a.strictNotReady()...)
	return why
}

func (a *Agent) handleReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if why := a.notReady(); len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", strings.Join(why, "; "))
		return
	}
	io.WriteString(w, "ready\n")
	// Ready, but how it routes may need an operator's eye (fail-static
	// while Consul is away, state not saved): one line each.
	for _, note := range a.notes() {
		io.WriteString(w, note+"\n")
	}
}

type stateService struct {
	Name      string   `json:"name"`
	VIP       string   `json:"vip"`
	Endpoints []string `json:"endpoints"`
	// Policy is how the service is routed (from its meta and --policy).
	Policy string `json:"policy,omitempty"`
	// Instances are what the sidecar knows of each instance (statedetail.go).
	Instances []stateInstance `json:"instances,omitempty"`
	// Counters are the service's counters since meshlet started.
	Counters *metrics.ServiceCounts `json:"counters,omitempty"`
	// Subset names the service and tag of a tag subset ("v2.web"), which
	// routes only to the service's instances that carry the tag.
	Subset *stateSubset `json:"subset,omitempty"`
}

type stateSubset struct {
	Service string `json:"service"`
	Tag     string `json:"tag"`
}

type state struct {
	Ready    bool           `json:"ready"`
	NotReady []string       `json:"not_ready,omitempty"`
	Notes    []string       `json:"notes,omitempty"` // how routing is degraded, as /readyz says
	Services []stateService `json:"services"`
	// Registrations are the app's own services, as meshlet registers them.
	Registrations []registration.State `json:"registrations"`
	// Consul is how fresh meshlet's view of Consul is.
	Consul *stateConsul `json:"consul,omitempty"`
	// MTLS is the mode and the Connect trust material meshlet presents.
	MTLS *stateMTLS `json:"mtls,omitempty"`
}

// stateMTLS is what /v1/state shows of mTLS.
type stateMTLS struct {
	Mode string `json:"mode"`
	// Certs is the trust material; absent when meshlet has no identity
	// to present (mTLS off, or a client-only sidecar without one).
	Certs *certs.Snapshot `json:"certs,omitempty"`
}

// notes are the lines that say, while ready, how meshlet is degraded.
func (a *Agent) notes() []string {
	return append(a.mesh.Status(), a.certsNotes()...)
}

func (a *Agent) handleState(w http.ResponseWriter, r *http.Request) {
	why := a.notReady()
	st := state{Ready: len(why) == 0, NotReady: why, Notes: a.notes(), Services: []stateService{}, Registrations: []registration.State{}}
	if a.registrar != nil {
		st.Registrations = a.registrar.States()
	}
	for name, addr := range a.vips.Snapshot() {
		s := stateService{Name: name, VIP: addr.String(), Endpoints: []string{}}
		if tag, service, ok := strings.Cut(name, "."); ok {
			s.Subset = &stateSubset{Service: service, Tag: tag}
		}
		for _, e := range a.mesh.Endpoints(name) {
			s.Endpoints = append(s.Endpoints, fmt.Sprintf("%s %s", e.ID, e.Addr))
		}
		if p, ok := a.mesh.PolicyOf(name); ok {
			s.Policy = p.String()
		}
		a.addServiceDetail(&s)
		st.Services = append(st.Services, s)
	}
	sort.Slice(st.Services, func(i, j int) bool { return st.Services[i].Name < st.Services[j].Name })
	st.Consul = a.stateConsul()
	st.MTLS = &stateMTLS{Mode: string(a.cfg.MTLS)}
	if a.certs != nil {
		snap := a.certs.Snapshot()
		st.MTLS.Certs = &snap
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}
