package registration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// prober checks the app once. It must return by the time ctx ends.
type prober interface {
	probe(ctx context.Context) (ok bool, output string)
}

// newProber returns the probe of c for the app at target.
func newProber(c Check, target netip.AddrPort) prober {
	switch c.Probe {
	case ProbeHTTP:
		return newHTTPProber("http://"+target.String()+c.HTTPPath, c.Timeout)
	case ProbeNone:
		return nil
	default:
		return tcpProber{addr: target.String()}
	}
}

// httpProber sends GET to a URL; 2xx and 3xx are healthy, like the seeds'
// acsrouting probe. Redirects are not followed: answering at all is what
// shows the app is up.
type httpProber struct {
	url    string
	client *http.Client
}

func newHTTPProber(url string, timeout time.Duration) *httpProber {
	return &httpProber{url: url, client: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:             nil, // the app is local; a proxy from the environment must not get in between
			DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
			DisableKeepAlives: true, // each probe should see whether the app still accepts
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (p *httpProber) probe(ctx context.Context) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return false, fmt.Sprintf("HTTP GET %s: %v", p.url, err)
	}
	req.Header.Set("User-Agent", "meshlet-probe")
	resp, err := p.client.Do(req)
	if err != nil {
		return false, fmt.Sprintf("HTTP GET %s: %v", p.url, err)
	}
	// Read a little of the body so the app does not see a reset, no more.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	ok := resp.StatusCode >= 200 && resp.StatusCode < 400
	return ok, fmt.Sprintf("HTTP GET %s: %s", p.url, resp.Status)
}

// tcpProber connects to the app's port and closes the connection.
type tcpProber struct{ addr string }

func (p tcpProber) probe(ctx context.Context) (bool, string) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return false, fmt.Sprintf("TCP connect %s: %v", p.addr, err)
	}
	c.Close()
	return true, fmt.Sprintf("TCP connect %s: success", p.addr)
}

// verdict turns single probe results into the check's state, as Kubernetes
// does with its thresholds: it starts critical, turns passing after
// successThreshold passes in a row and critical after failureThreshold
// failures in a row, and otherwise keeps its state.
type verdict struct {
	successThreshold, failureThreshold int
	successes, failures                int
	passing                            bool
}

// observe records one result and reports whether the state changed.
func (v *verdict) observe(ok bool) (changed bool) {
	if ok {
		v.successes++
		v.failures = 0
		if !v.passing && v.successes >= v.successThreshold {
			v.passing = true
			return true
		}
		return false
	}
	v.failures++
	v.successes = 0
	if v.passing && v.failures >= v.failureThreshold {
		v.passing = false
		return true
	}
	return false
}

// describe adds the count toward the next change to a probe's output, so
// that an operator looking at Consul sees why a failing probe has not
// turned the check critical yet.
func (v *verdict) describe(output string) string {
	switch {
	case v.passing && v.failures > 0:
		return fmt.Sprintf("%s (failure %d of %d before critical)", output, v.failures, v.failureThreshold)
	case !v.passing && v.successes > 0:
		return fmt.Sprintf("%s (success %d of %d before passing)", output, v.successes, v.successThreshold)
	}
	return output
}
