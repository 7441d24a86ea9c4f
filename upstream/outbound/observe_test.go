package outbound

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshlet/meshlet/metrics"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// statusInstance answers GET /status/CODE with CODE, anything else 200,
// and echoes what the request carried that tests look for.
func statusInstance(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", name)
		for _, h := range []string{"X-Request-Id", "Traceparent", "Tracestate", "B3", "X-B3-Traceid"} {
			w.Header().Set("X-Seen-"+h, r.Header.Get(h))
		}
		io.Copy(io.Discard, r.Body)
		code := 200
		if c, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			code, _ = strconv.Atoi(c)
		}
		w.WriteHeader(code)
		io.WriteString(w, name+"\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func withMetrics(m *metrics.Metrics) func(*upstream.Config) {
	return func(c *upstream.Config) { c.Metrics = m }
}

func get(t *testing.T, c *http.Client, path, cookie string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://web.local"+path, nil)
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// Requests are counted once each, by status class, on the forwarder and
// on the net/http path alike, with their latency and the attempts of
// each instance; meshlet's own 503 counts as 5xx.
func TestMetricsCountRequestsByClass(t *testing.T) {
	reg := metrics.New()
	a, b := statusInstance(t, "a"), statusInstance(t, "b")
	fc, tm, front := webMesh(t, withMetrics(reg),
		upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	c := upstreamtest.Client(front)
	for range 6 {
		get(t, c, "/", "")
	}
	for range 3 {
		get(t, c, "/status/404", "")
	}
	get(t, c, "/status/302", "")
	// HTTP/1.0 goes to the net/http path.
	conn, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /status/201 HTTP/1.0\r\nHost: web.local\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("HTTP/1.0 request: %v %v", resp, err)
	}
	conn.Close()
	svc := reg.Service("web")
	upstreamtest.Eventually(t, "the net/http request to be counted", func() bool { return svc.Counts().ByClass["2xx"] == 7 })
	var attempts uint64
	for _, ic := range svc.InstanceCounts() {
		attempts += ic.Requests
	}
	if attempts != 11 {
		t.Errorf("%d attempts on the instances, want 11 (%v)", attempts, svc.InstanceCounts())
	}
	// No instance: meshlet's 503. The instances' series go with them.
	fc.SetHealth("web", 9)
	upstreamtest.Eventually(t, "the instances to go", func() bool { return len(tm.Endpoints("web")) == 0 })
	if code := get(t, c, "/", "").StatusCode; code != 503 {
		t.Fatalf("without instances: %d, want 503", code)
	}
	upstreamtest.Eventually(t, "the 503 to be counted", func() bool { return svc.Counts().ByClass["5xx"] > 0 })
	got := svc.Counts()
	if got.ByClass["2xx"] != 7 || got.ByClass["4xx"] != 3 || got.ByClass["3xx"] != 1 {
		t.Errorf("by class %v, want 2xx 7, 3xx 1, 4xx 3", got.ByClass)
	}
	n503 := got.ByClass["5xx"]
	if ic := svc.InstanceCounts(); len(ic) != 0 {
		t.Errorf("instances that left Consul keep series: %v", ic)
	}
	want := fmt.Sprintf("meshlet_request_duration_seconds_count{service=\"web\"} %d", 11+n503)
	var out strings.Builder
	if mfs, err := reg.Registry().Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "meshlet_request_duration_seconds" {
				fmt.Fprintf(&out, "meshlet_request_duration_seconds_count{service=%q} %d", "web", mf.GetMetric()[0].GetHistogram().GetSampleCount())
			}
		}
	}
	if out.String() != want {
		t.Errorf("latency: %q, want %q", out.String(), want)
	}
}

// Retries, refusals by the budget, failures and ejections are counted
// per service and per instance.
func TestMetricsRetriesFailuresEjections(t *testing.T) {
	reg := metrics.New()
	good := statusInstance(t, "good")
	_, _, front := webMesh(t, withMetrics(reg),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)), "meshlet-eject-after", "2"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "good", upstreamtest.AddrOf(good)), "meshlet-eject-after", "2"))
	c := upstreamtest.Client(front)
	for range 6 {
		if resp := get(t, c, "/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	svc := reg.Service("web")
	counts := map[string]metrics.InstanceCounts{}
	for _, ic := range svc.InstanceCounts() {
		counts[ic.ID] = ic
	}
	dead := counts["dead"]
	if dead.Failures != 2 || dead.Ejections != 1 || dead.Requests != 2 {
		t.Errorf("dead instance: %+v, want 2 attempts, 2 failures, 1 ejection (after 2)", dead)
	}
	if got := svc.Counts().Retries; got != 2 {
		t.Errorf("%d retries, want 2 (one per failed connect)", got)
	}
	if counts["good"].Requests != 6 {
		t.Errorf("good instance: %+v, want 6 attempts", counts["good"])
	}
}

func TestMetricsRetryRefusedByBudget(t *testing.T) {
	reg := metrics.New()
	good := statusInstance(t, "good")
	_, _, front := webMesh(t, withMetrics(reg),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)),
			"meshlet-retry-budget", "0%", "meshlet-retry-min", "0", "meshlet-eject-after", "0"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "good", upstreamtest.AddrOf(good)),
			"meshlet-retry-budget", "0%", "meshlet-retry-min", "0", "meshlet-eject-after", "0"))
	c := upstreamtest.Client(front)
	refused := uint64(0)
	for range 30 {
		get(t, c, "/", "")
		if refused = reg.Service("web").Counts().RetriesRefused; refused > 0 {
			break
		}
	}
	if refused == 0 {
		t.Fatalf("no retry refused by an empty budget: %+v", reg.Service("web").Counts())
	}
}

// Stickiness: a new client is pinned, a client with a valid cookie is
// routed by it, and a client whose instance left is re-pinned.
func TestMetricsSticky(t *testing.T) {
	reg := metrics.New()
	a, b := statusInstance(t, "a"), statusInstance(t, "b")
	ea := upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), "meshlet-sticky", "cookie", "meshlet-sticky-cookie", "PIN")
	eb := upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)), "meshlet-sticky", "cookie", "meshlet-sticky-cookie", "PIN")
	fc, tm, front := webMesh(t, withMetrics(reg), ea, eb)
	c := upstreamtest.Client(front)
	inst, cookies := upstreamtest.GetWith(t, c, "")
	if len(cookies) != 1 {
		t.Fatalf("first answer: cookies %v", cookies)
	}
	pin := strings.SplitN(cookies[0], ";", 2)[0]
	for range 3 {
		if got, _ := upstreamtest.GetWith(t, c, pin); got != inst {
			t.Fatalf("pinned to %s, went to %s", inst, got)
		}
	}
	// The pinned instance leaves.
	if inst == "a" {
		fc.SetHealth("web", 9, eb)
	} else {
		fc.SetHealth("web", 9, ea)
	}
	upstreamtest.Eventually(t, "the instance to leave", func() bool { return len(tm.Endpoints("web")) == 1 })
	if _, cookies := upstreamtest.GetWith(t, c, pin); len(cookies) != 1 {
		t.Fatalf("after the pinned instance left: cookies %v, want a new one", cookies)
	}
	got := reg.Service("web").Counts()
	if got.StickyPins != 1 || got.StickyRouted != 3 || got.StickyRepins != 1 {
		t.Errorf("pins %d, routed %d, re-pins %d; want 1, 3, 1", got.StickyPins, got.StickyRouted, got.StickyRepins)
	}
	// The instance that left has no series any more.
	for _, ic := range reg.Service("web").InstanceCounts() {
		if ic.ID == inst {
			t.Errorf("instance %s left Consul but keeps its series: %+v", inst, ic)
		}
	}
}

// Raw TCP connections are counted when opened and closed, with their
// bytes each way.
func TestMetricsRawTCP(t *testing.T) {
	reg := metrics.New()
	addr := upstreamtest.TCPServer(t, upstreamtest.Echo)
	_, _, front := webMesh(t, withMetrics(reg), upstreamtest.Instance(t, "web", "echo", addr))
	payload := bytes.Repeat([]byte("\x00raw"), 1000)
	for range 2 {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			conn.Write(payload)
			conn.(*net.TCPConn).CloseWrite()
		}()
		got, _ := io.ReadAll(conn)
		conn.Close()
		if len(got) != len(payload) {
			t.Fatalf("echo: %d bytes, want %d", len(got), len(payload))
		}
	}
	svc := reg.Service("web")
	upstreamtest.Eventually(t, "both connections closed", func() bool { return svc.Counts().TCPClosed == 2 })
	if got := svc.Counts().TCPOpened; got != 2 {
		t.Errorf("%d opened, want 2", got)
	}
	want := fmt.Sprintf(`
# HELP meshlet_tcp_bytes_total Bytes of raw TCP connections: direction sent (app to instance) or received (instance to app).
# TYPE meshlet_tcp_bytes_total counter
meshlet_tcp_bytes_total{direction="received",service="web"} %d
meshlet_tcp_bytes_total{direction="sent",service="web"} %d
`, 2*len(payload), 2*len(payload))
	if err := testutil.GatherAndCompare(reg.Registry(), strings.NewReader(want), "meshlet_tcp_bytes_total"); err != nil {
		t.Error(err)
	}
}

// syncBuffer is a bytes.Buffer safe for the access log's writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// The access log has one JSON line per request with its fields; a
// request without X-Request-Id gets one, which is logged; one with it
// keeps it; trace context headers pass untouched; on both HTTP paths.
func TestAccessLog(t *testing.T) {
	var buf syncBuffer
	a := statusInstance(t, "a")
	_, _, front := webMesh(t, func(c *upstream.Config) {
		c.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
	}, upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)))
	trace := map[string]string{
		"Traceparent":  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"Tracestate":   "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
		"B3":           "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
		"X-B3-Traceid": "80f198ee56343ba864fe8b2a57d3eff7",
	}
	send := func(proto, path, requestID string) *http.Response {
		conn, err := net.Dial("tcp", front.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		var req strings.Builder
		fmt.Fprintf(&req, "POST %s %s\r\nHost: web.local\r\nContent-Length: 5\r\nConnection: close\r\n", path, proto)
		for k, v := range trace {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
		if requestID != "" {
			fmt.Fprintf(&req, "X-Request-Id: %s\r\n", requestID)
		}
		req.WriteString("\r\nhello")
		io.WriteString(conn, req.String())
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		for k, v := range trace {
			if got := resp.Header.Get("X-Seen-" + k); got != v {
				t.Errorf("%s %s: the instance saw %s %q, want %q", proto, path, k, got, v)
			}
		}
		return resp
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		resp := send(proto, "/status/201", "")
		id := resp.Header.Get("X-Seen-X-Request-Id")
		if len(id) != 36 {
			t.Errorf("%s: the instance saw X-Request-Id %q, want a new UUID", proto, id)
		}
		resp = send(proto, "/", "app-chose-this")
		if got := resp.Header.Get("X-Seen-X-Request-Id"); got != "app-chose-this" {
			t.Errorf("%s: the app's X-Request-Id reached the instance as %q", proto, got)
		}
		// Each line is written once its answer is: the two may come in
		// either order.
		var lines []map[string]any
		upstreamtest.Eventually(t, "two access log lines", func() bool { lines = buf.lines(t); return len(lines) == 2 })
		first, second := lines[0], lines[1]
		if first["request_id"] == "app-chose-this" {
			first, second = second, first
		}
		want := map[string]any{
			"msg": "request", "service": "web", "instance": "a", "addr": upstreamtest.AddrOf(a), "method": "POST",
			"status": float64(201), "bytes_in": float64(5), "bytes_out": float64(2), "attempts": float64(1),
			"sticky": false, "flags": "-", "request_id": id,
		}
		for k, v := range want {
			if first[k] != v {
				t.Errorf("%s: access log %s = %v, want %v (line %v)", proto, k, first[k], v, first)
			}
		}
		for _, k := range []string{"time", "start", "duration_ms"} {
			if _, ok := first[k]; !ok {
				t.Errorf("%s: access log line has no %s: %v", proto, k, first)
			}
		}
		if second["request_id"] != "app-chose-this" || second["status"] != float64(200) {
			t.Errorf("%s: second line %v", proto, second)
		}
		buf.mu.Lock()
		buf.b.Reset()
		buf.mu.Unlock()
	}
}

// A request meshlet answers itself is logged with its flag.
func TestAccessLogFlags(t *testing.T) {
	var buf syncBuffer
	_, _, front := webMesh(t, func(c *upstream.Config) {
		c.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
	}, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)), "meshlet-retries", "0"))
	c := upstreamtest.Client(front)
	if resp := get(t, c, "/", ""); resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	var lines []map[string]any
	upstreamtest.Eventually(t, "a line", func() bool { lines = buf.lines(t); return len(lines) == 1 })
	if l := lines[0]; l["flags"] != upstream.FlagConnect || l["status"] != float64(502) || l["instance"] != "dead" || l["attempts"] != float64(1) {
		t.Errorf("line %v, want flags UF, status 502, instance dead, 1 attempt", l)
	}
}
