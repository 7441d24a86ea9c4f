package meshlab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// RegisterMeta (re-)registers an instance as Register does, with service
// meta: where meshlet's per-service settings (meshlet-sticky, ...) live.
func (w *World) RegisterMeta(inst *Instance, meta map[string]string) error {
	reg := &api.AgentServiceRegistration{
		ID:      inst.Name,
		Name:    w.Opts.Service,
		Address: inst.Host.IP.String(),
		Port:    8080,
		Tags:    inst.Tags,
		Meta:    meta,
		Check: &api.AgentServiceCheck{
			CheckID:  "check-" + inst.Name,
			HTTP:     inst.URL("/health"),
			Interval: "1s",
			Timeout:  "1s",
		},
	}
	if err := w.Consul.Agent().ServiceRegister(reg); err != nil {
		return fmt.Errorf("registering %s with meta: %w", inst.Name, err)
	}
	return nil
}

// AddInstanceMeta starts one more instance, as AddInstance does, and
// registers it with meta from the start.
func (w *World) AddInstanceMeta(name string, meta map[string]string) (*Instance, error) {
	h, err := w.Lab.AddHost(name)
	if err != nil {
		return nil, err
	}
	p, err := h.Start("webinstance", nil, w.Bins.WebInstance, "-listen", ":8080", "-name", name)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Name: name, Host: h, Proc: p}
	if i := len(w.Instances); i < len(w.Opts.InstanceTags) {
		inst.Tags = w.Opts.InstanceTags[i]
	}
	w.Instances = append(w.Instances, inst)
	return inst, w.RegisterMeta(inst, meta)
}

// Deregister removes an instance from Consul.
func (w *World) Deregister(inst *Instance) error {
	if err := w.Consul.Agent().ServiceDeregister(inst.Name); err != nil {
		return fmt.Errorf("deregistering %s: %w", inst.Name, err)
	}
	return nil
}

// SetDelay makes an instance answer every GET / ms milliseconds late.
func (w *World) SetDelay(inst *Instance, ms int) error {
	resp, err := w.ConsulHost.HTTPClient(5*time.Second).Post(inst.URL(fmt.Sprintf("/admin/delay?ms=%d", ms)), "text/plain", nil)
	if err != nil {
		return fmt.Errorf("setting the delay of %s: %w", inst.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("setting the delay of %s: %s", inst.Name, resp.Status)
	}
	return nil
}

// Hit is one request's outcome as the app saw it.
type Hit struct {
	At        time.Time // when the answer (or error) came
	Status    int
	Instance  string // X-Instance
	Error     string // X-Meshlet-Error, or the client's error
	SetCookie []string
}

// OK reports whether the request succeeded.
func (h Hit) OK() bool { return h.Status == http.StatusOK && h.Error == "" }

// AppClient is an HTTP client in the app's namespace that sends requests
// for host to vip, as the app would after resolving host through meshlet.
type AppClient struct {
	HTTP *http.Client
	VIP  netip.Addr
	Host string
}

// NewAppClient returns a client that opens a new connection per request
// and, when keepCookies is set, keeps cookies as a browser would.
func (w *World) NewAppClient(vip netip.Addr, host string, keepCookies bool) *AppClient {
	c := w.App.HTTPClient(10 * time.Second)
	if keepCookies {
		jar, _ := cookiejar.New(nil) // never fails without options
		c.Jar = jar
	}
	return &AppClient{HTTP: c, VIP: vip, Host: host}
}

// Get makes one request; cookie, when not empty, is sent as the Cookie
// header (besides those of the jar).
func (c *AppClient) Get(ctx context.Context, path, cookie string) Hit {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.VIP.String()+path, nil)
	if err != nil {
		return Hit{At: time.Now(), Error: err.Error()}
	}
	req.Host = c.Host
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Hit{At: time.Now(), Error: err.Error()}
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	h := Hit{At: time.Now(), Status: resp.StatusCode, Instance: strings.TrimSpace(resp.Header.Get("X-Instance")),
		Error: resp.Header.Get("X-Meshlet-Error"), SetCookie: resp.Header.Values("Set-Cookie")}
	if err != nil && h.Error == "" {
		h.Error = err.Error()
	}
	return h
}

// ConstantRate starts a request every interval, each on its own goroutine
// and connection, whether or not earlier ones have answered, until n were
// started or ctx ends; then waits for all and returns them in start order.
// Bounded by n, ctx and the client's timeout.
func (c *AppClient) ConstantRate(ctx context.Context, path string, n int, interval time.Duration) []Hit {
	var wg sync.WaitGroup
	results := make([]Hit, n) // each goroutine writes its own element
	tick := time.NewTicker(interval)
	defer tick.Stop()
	started := 0
loop:
	for ; started < n; started++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// A request started is finished even when ctx ends: the
			// client's timeout bounds it.
			results[i] = c.Get(context.WithoutCancel(ctx), path, "")
		}(started)
		select {
		case <-ctx.Done():
			started++
			break loop
		case <-tick.C:
		}
	}
	wg.Wait()
	return results[:started]
}

// CountBy sums hits by instance, or by "status N" / the error for those
// that failed.
func CountBy(hits []Hit) map[string]int {
	m := map[string]int{}
	for _, h := range hits {
		switch {
		case h.OK():
			m[h.Instance]++
		case h.Status != 0:
			m[fmt.Sprintf("status %d %s", h.Status, h.Error)]++
		default:
			m["error: "+h.Error]++
		}
	}
	return m
}

// Failed returns the hits that did not succeed.
func Failed(hits []Hit) []Hit {
	var out []Hit
	for _, h := range hits {
		if !h.OK() {
			out = append(out, h)
		}
	}
	return out
}
