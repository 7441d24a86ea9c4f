package upstream_test

import (
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// Regression (review): a probe kept an instance out after Consul passed it
// again, dialling its old address. An instance re-registered under the same ID at a new address (a
// recreated container) after a connect timeout ejected it.
func TestReadmittedInstanceAtANewAddressGetsTraffic(t *testing.T) {
	const dialTimeout = 400 * time.Millisecond
	var holes blackHole
	a, b := namedInstance(t, "http", "a"), namedInstance(t, "http", "b")
	holes.set(a, true)
	fc, _, front := webMesh(t, func(c *upstream.Config) {
		c.Dialer = &net.Dialer{Timeout: dialTimeout, ControlContext: holes.control}
	}, upstreamtest.Instance(t, "web", "a", a), upstreamtest.Instance(t, "web", "b", b))
	ask := requester(t, "http", front)
	for range 4 {
		ask()
	}
	// a's container is recreated: critical first, then passing at a new address.
	fc.SetHealth("web", 8, upstreamtest.WithStatus(upstreamtest.Instance(t, "web", "a", a), api.HealthCritical), upstreamtest.Instance(t, "web", "b", b))
	time.Sleep(300 * time.Millisecond)
	a2 := namedInstance(t, "http", "a")
	fc.SetHealth("web", 9, upstreamtest.Instance(t, "web", "a", a2), upstreamtest.Instance(t, "web", "b", b))
	deadline := time.Now().Add(5 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		if ask() == "a" {
			n++
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("a answered %d of ~100", n)
	if n < 30 {
		t.Errorf("a, passing again at a new address, got no request in 5s")
	}
}

// meshlet-timeout shorter than the connect timeout: the dead instance.
func TestRequestTimeoutCuttingAConnectEjects(t *testing.T) {
	var holes blackHole
	a, b := namedInstance(t, "http", "a"), namedInstance(t, "http", "b")
	holes.set(a, true)
	_, m, front := webMesh(t, func(c *upstream.Config) {
		c.Dialer = &net.Dialer{Timeout: 2 * time.Second, ControlContext: holes.control}
	}, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", a), "meshlet-timeout", "300ms"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", b), "meshlet-timeout", "300ms"))
	c := upstreamtest.Client(front)
	fails := 0
	for range 20 {
		st, _, _ := upstreamtest.Do(t, c, "GET", "")
		if st != 200 {
			fails++
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("failed %d of 20; a's failures counted: %d", fails, m.ConsecutiveFailures("web", "a"))
	if fails > 1 {
		t.Errorf("%d of 20 requests failed on the dead instance", fails)
	}
}

// The net/http path: try timeout during the connect.
func TestFallbackTryTimeoutCuttingAConnectEjects(t *testing.T) {
	var holes blackHole
	a, b := namedInstance(t, "http", "a"), namedInstance(t, "http", "b")
	holes.set(a, true)
	_, m, front := webMesh(t, func(c *upstream.Config) {
		c.Dialer = &net.Dialer{Timeout: 2 * time.Second, ControlContext: holes.control}
	}, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", a), "meshlet-try-timeout", "300ms"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", b), "meshlet-try-timeout", "300ms"))
	slow, fails := 0, 0
	for range 12 {
		app := upstreamtest.DialApp(t, front)
		start := time.Now()
		app.Send("POST / HTTP/1.0\r\nHost: web.local\r\nContent-Length: 2\r\n\r\nhi")
		resp, _ := app.Read("POST")
		if time.Since(start) > 250*time.Millisecond {
			slow++
		}
		if resp.StatusCode != 200 {
			fails++
		}
	}
	t.Logf("slow %d, failed %d of 12; a's failures: %d", slow, fails, m.ConsecutiveFailures("web", "a"))
	if fails > 0 || slow > 1 {
		t.Errorf("dead instance not ejected on the net/http path")
	}
}

func TestFallbackConnectTimeoutEjects(t *testing.T) {
	var holes blackHole
	a, b := namedInstance(t, "http", "a"), namedInstance(t, "http", "b")
	holes.set(a, true)
	_, _, front := webMesh(t, func(c *upstream.Config) {
		c.Dialer = &net.Dialer{Timeout: 400 * time.Millisecond, ControlContext: holes.control}
	}, upstreamtest.Instance(t, "web", "a", a), upstreamtest.Instance(t, "web", "b", b))
	slow, fails := 0, 0
	for range 10 {
		app := upstreamtest.DialApp(t, front)
		start := time.Now()
		app.Send("POST / HTTP/1.0\r\nHost: web.local\r\nContent-Length: 2\r\n\r\nhi")
		resp, _ := app.Read("POST")
		if time.Since(start) > 350*time.Millisecond {
			slow++
		}
		if resp.StatusCode != 200 {
			fails++
		}
	}
	t.Logf("slow %d, failed %d of 10", slow, fails)
	if fails > 0 || slow > 1 {
		t.Errorf("dead instance not ejected on the net/http path")
	}
}
