package upstream

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"
)

// This file is what the mesh tells about the requests it routed: each
// finished request's counters and access log line (Done, ConnClosed), and
// the state of instances and of Consul that /v1/state and the metrics
// read (Instances, ConsulState).

// Outcome is how one request of the app ended, as the front-end that
// served it tells Done. The front-end owns it and may reuse it.
type Outcome struct {
	Start  time.Time // when the request's head was read
	Method string
	// Status is the status the app got (an instance's, or meshlet's own
	// answer's); 0 when it got none.
	Status int
	// Code is the X-Meshlet-Error code of meshlet's own answer, or of the
	// failure that cut an answer short; "" for an instance's answer.
	Code string
	// CutShort: the answer had begun and was cut (the app saw a reset).
	CutShort bool
	// BytesIn and BytesOut are the body bytes read from the app and
	// written to it.
	BytesIn, BytesOut int64
	// RequestID is the request's X-Request-Id (the app's, or the one
	// the front-end added); "" when none.
	RequestID string
}

// Flags of the access log, in the spirit of Envoy's response flags: why
// the app did not get an instance's whole answer ("-": it did).
const (
	FlagNoHealthy  = "UH"  // no healthy instance
	FlagNoConsul   = "NC"  // Consul has not answered yet for the service
	FlagStale      = "SI"  // the last good instances are older than --max-stale
	FlagConnect    = "UF"  // no connection could be made to an instance
	FlagTimeout    = "UT"  // the request's or an attempt's timeout passed
	FlagFailed     = "UC"  // the instance failed (reset, closed, malformed answer)
	FlagAppClosed  = "DC"  // the app went away first
	FlagBadRequest = "DPE" // the app's request was refused as malformed
	FlagCutShort   = "CS"  // with one of the above: the answer had begun when it was cut
	flagNone       = "-"
)

// flag returns the access log flag of an outcome.
func (o *Outcome) flag() string {
	f := flagNone
	switch o.Code {
	case "":
	case ErrCodeNoInstance:
		f = FlagNoHealthy
	case ErrCodeNoAnswer:
		f = FlagNoConsul
	case ErrCodeStale:
		f = FlagStale
	case ErrCodeUnreachable:
		f = FlagConnect
	case ErrCodeTimeout:
		f = FlagTimeout
	case ErrCodeFailed:
		f = FlagFailed
	case ErrCodeAppClosed:
		f = FlagAppClosed
	case ErrCodeBadRequest:
		f = FlagBadRequest
	default:
		f = o.Code
	}
	if o.CutShort {
		if f == flagNone {
			return FlagCutShort
		}
		return f + "," + FlagCutShort
	}
	return f
}

// Done records a finished HTTP request of t, routed by p (p has no
// routing when Choose refused the request): the service's request
// counter by status class and its latency, and the access log line when
// Config.AccessLog is set. Without an access log it allocates nothing.
func (m *Mesh) Done(t *Target, p *Pick, o *Outcome) {
	d := time.Since(o.Start)
	t.watch.metrics.Request(o.Status, d)
	if m.cfg.AccessLog != nil {
		m.accessLog(t, p, o, d)
	}
}

func (m *Mesh) accessLog(t *Target, p *Pick, o *Outcome, d time.Duration) {
	instance, addr, attempts, sticky := "", "", 0, false
	if p.set != nil && p.target == t {
		e := p.Endpoint()
		instance, addr, attempts, sticky = e.ID, e.Addr, len(p.tried), p.stickyRouted
	}
	m.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.Time("start", o.Start),
		slog.String("service", t.watch.name),
		slog.String("instance", instance),
		slog.String("addr", addr),
		slog.String("method", o.Method),
		slog.Int("status", o.Status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.Int64("bytes_in", o.BytesIn),
		slog.Int64("bytes_out", o.BytesOut),
		slog.Int("attempts", attempts),
		slog.Bool("sticky", sticky),
		slog.String("flags", o.flag()),
		slog.String("request_id", o.RequestID),
	)
}

// AccessLogging reports whether requests are logged (Config.AccessLog),
// so that a front-end adds X-Request-Id only then.
func (m *Mesh) AccessLogging() bool { return m.cfg.AccessLog != nil }

// ConnClosed records the end of a raw TCP connection that p routed
// (Connected counted its start), with the bytes it carried each way.
func (m *Mesh) ConnClosed(p *Pick, sent, received int64) {
	p.target.watch.metrics.TCPClosed(sent, received)
}

// InstanceState is what the mesh knows of one instance it routes to.
type InstanceState struct {
	Endpoint
	// EjectedFor is how much longer passive health keeps it out; 0 when
	// it is not ejected.
	EjectedFor time.Duration
	// InFlight counts its requests (and raw connections) in flight.
	InFlight int64
}

// Instances returns the instances a watched service routes to now (as
// Endpoints, which it follows), with their ejection and requests in
// flight; nil when the service is not watched or has no instances yet.
func (m *Mesh) Instances(name string) []InstanceState {
	w := m.watchOf(name)
	if w == nil {
		return nil
	}
	v := w.view.Load()
	if v == nil {
		return nil
	}
	now := time.Now()
	set, _, _ := v.route(now)
	if set == nil {
		return nil
	}
	out := make([]InstanceState, set.Len())
	for i := range out {
		h := set.hosts[i]
		out[i] = InstanceState{Endpoint: set.At(i), InFlight: h.active.Load()}
		if until := h.ejectedUntil.Load(); until > now.UnixNano() {
			out[i].EjectedFor = time.Duration(until - now.UnixNano())
		}
	}
	return out
}

// ConsulState is how fresh the mesh's view of Consul is.
type ConsulState struct {
	// SinceAnswer is how long Consul has not answered the catalog watch
	// (0 while it answers): since the outage began, or since the saved
	// state was confirmed, or since Run started when it never answered.
	SinceAnswer time.Duration
	// FailStatic: Consul does not answer and the mesh routes on its last
	// good (or saved) instances.
	FailStatic bool
	// WatchErrors counts the failed queries of the catalog and health
	// watches since start.
	WatchErrors uint64
}

// ConsulState reports how fresh the mesh's view of Consul is.
func (m *Mesh) ConsulState() ConsulState {
	st := ConsulState{WatchErrors: m.watchErrors.Load()}
	now := time.Now()
	if since := m.consulFailingSince(); since != 0 {
		st.SinceAnswer = now.Sub(time.Unix(0, since))
		st.FailStatic = m.catalog.current.Load() != nil
	} else if m.catalog.current.Load() == nil {
		st.SinceAnswer = now.Sub(m.created)
	}
	return st
}

// RequestIDHeader names the request's ID, which the front-ends add to
// requests that have none while the access log is on, and log.
const RequestIDHeader = "X-Request-Id"

// AppendRequestID appends a new random request ID to b: a version 4 UUID,
// as Envoy and others make them. Not a secret: math/rand is enough.
func AppendRequestID(b []byte) []byte {
	const hex = "0123456789abcdef"
	var u [16]byte
	x, y := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		u[i], u[8+i] = byte(x>>(8*i)), byte(y>>(8*i))
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hex[c>>4], hex[c&0x0f])
	}
	return b
}

// RequestID returns the request's X-Request-Id from h, and when it has
// none adds a new one to h: for the net/http path.
func RequestID(h http.Header) string {
	if v := h.Get(RequestIDHeader); v != "" {
		return v
	}
	id := string(AppendRequestID(make([]byte, 0, 36)))
	h.Set(RequestIDHeader, id)
	return id
}
