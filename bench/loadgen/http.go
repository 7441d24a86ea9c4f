// Package loadgen is the benchmark harness's own load client: HTTP/1.1 at a
// constant rate over a fixed number of keep-alive connections, with
// latencies corrected for coordinated omission, and a bulk TCP transfer.
// wrk2 is not packaged in Debian, and a client of our own keeps the
// harness free of new modules.
//
// Every run is bounded: nothing is sent after Duration, and each request
// gives up after Timeout, so a run ends by itself within Duration+Timeout.
package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// HTTPConfig is one constant-rate run.
type HTTPConfig struct {
	URL      string        // http://host[:port]/path; host may be a name (resolved once)
	Host     string        // Host header; default the URL's host
	Rate     float64       // requests per second over all connections; must be > 0
	Conns    int           // keep-alive connections, each sending one request at a time
	Duration time.Duration // how long requests are started
	Timeout  time.Duration // per request (connect, write, read); default 2s
	// CountHeader, when set, counts responses by this header's value
	// (X-Instance: which instance answered).
	CountHeader string
	// Dial opens connections; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// HTTPResult is what a run measured. Latencies are in microseconds so that
// the JSON the command prints is plain numbers.
type HTTPResult struct {
	Sent         int            `json:"sent"`    // requests started
	OK           int            `json:"ok"`      // 2xx answers
	Non2xx       int            `json:"non_2xx"` // other answers
	Errors       int            `json:"errors"`  // no answer (connect, write, read, timeout)
	Seconds      float64        `json:"seconds"` // from the first scheduled request to the last answer
	Rate         float64        `json:"rate"`    // answers per second
	P50us        float64        `json:"p50_us"`  // latency percentiles of answered requests
	P90us        float64        `json:"p90_us"`  //
	P99us        float64        `json:"p99_us"`  //
	P999us       float64        `json:"p999_us"` //
	MaxUs        float64        `json:"max_us"`  //
	Late         int            `json:"late"`    // requests that started late because their connection was busy
	ByHeader     map[string]int `json:"by_header,omitempty"`
	ErrorSamples []string       `json:"error_samples,omitempty"` // the first few errors, for the log
}

// Failed is the number of requests that did not get a 2xx answer.
func (r HTTPResult) Failed() int { return r.Non2xx + r.Errors }

type worker struct {
	lat      []time.Duration
	sent     int
	ok       int
	non2xx   int
	errs     int
	late     int
	byHeader map[string]int
	errSamp  []string
	lastDone time.Time
}

// RunHTTP sends cfg.Rate requests per second for cfg.Duration.
//
// Connection i sends its k-th request at start + (i + k·Conns)/Rate. The
// latency of a request whose connection was still busy at its scheduled
// time is counted from that time (the wait is what a user would have
// seen: no coordinated omission); otherwise it is counted from when the
// request was written, so that the generator's own timer lateness is not
// charged to the server.
func RunHTTP(ctx context.Context, cfg HTTPConfig) (HTTPResult, error) {
	if cfg.Rate <= 0 || cfg.Conns <= 0 || cfg.Duration <= 0 {
		return HTTPResult{}, fmt.Errorf("loadgen: rate %v, conns %d and duration %v must be positive", cfg.Rate, cfg.Conns, cfg.Duration)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return HTTPResult{}, fmt.Errorf("loadgen: %q is not an http:// URL", cfg.URL)
	}
	host := cfg.Host
	if host == "" {
		host = u.Host
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	// Resolve once, as a client with a connection pool would.
	if h := u.Hostname(); net.ParseIP(h) == nil {
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", h)
		if err != nil || len(ips) == 0 {
			return HTTPResult{}, fmt.Errorf("loadgen: resolving %s: %v", h, err)
		}
		addr = net.JoinHostPort(ips[0].String(), portOf(u))
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	path := u.RequestURI()
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: meshlet-loadgen\r\n\r\n")

	interval := time.Duration(float64(time.Second) * float64(cfg.Conns) / cfg.Rate)
	perConn := int(cfg.Duration/interval) + 1
	start := time.Now().Add(10 * time.Millisecond)
	end := start.Add(cfg.Duration)
	workers := make([]*worker, cfg.Conns)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{lat: make([]time.Duration, 0, perConn), byHeader: map[string]int{}}
		workers[i] = w
		first := start.Add(time.Duration(float64(time.Second) * float64(i) / cfg.Rate))
		wg.Go(func() { w.run(ctx, cfg, dial, addr, req, first, interval, end) })
	}
	wg.Wait()

	var res HTTPResult
	var all []time.Duration
	last := start
	res.ByHeader = map[string]int{}
	for _, w := range workers {
		res.Sent += w.sent
		res.OK += w.ok
		res.Non2xx += w.non2xx
		res.Errors += w.errs
		res.Late += w.late
		all = append(all, w.lat...)
		for k, v := range w.byHeader {
			res.ByHeader[k] += v
		}
		for _, s := range w.errSamp {
			if len(res.ErrorSamples) < 5 {
				res.ErrorSamples = append(res.ErrorSamples, s)
			}
		}
		if w.lastDone.After(last) {
			last = w.lastDone
		}
	}
	if len(res.ByHeader) == 0 {
		res.ByHeader = nil
	}
	res.Seconds = last.Sub(start).Seconds()
	if res.Seconds > 0 {
		res.Rate = float64(res.OK+res.Non2xx) / res.Seconds
	}
	slices.Sort(all)
	res.P50us = us(percentile(all, 0.50))
	res.P90us = us(percentile(all, 0.90))
	res.P99us = us(percentile(all, 0.99))
	res.P999us = us(percentile(all, 0.999))
	if len(all) > 0 {
		res.MaxUs = us(all[len(all)-1])
	}
	return res, nil
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	return "80"
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// percentile returns the q-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func (w *worker) fail(err error) {
	w.errs++
	if len(w.errSamp) < 2 {
		w.errSamp = append(w.errSamp, err.Error())
	}
}

func (w *worker) run(ctx context.Context, cfg HTTPConfig, dial func(context.Context, string, string) (net.Conn, error),
	addr string, req []byte, next time.Time, interval time.Duration, end time.Time) {
	var (
		conn net.Conn
		br   *bufio.Reader
		prev time.Time // when the previous request on this connection finished
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	timer := time.NewTimer(0)
	<-timer.C
	for ; next.Before(end); next = next.Add(interval) {
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		} else if ctx.Err() != nil {
			return
		}
		w.sent++
		began := time.Now()
		from := began
		if prev.After(next) {
			from = next // the connection was busy at the scheduled time
			w.late++
		}
		if conn == nil {
			dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			c, err := dial(dctx, "tcp", addr)
			cancel()
			if err != nil {
				w.fail(fmt.Errorf("connecting to %s: %w", addr, err))
				prev = time.Now()
				continue
			}
			conn, br = c, bufio.NewReaderSize(c, 16<<10)
		}
		status, inst, keep, err := roundTrip(conn, br, req, began.Add(cfg.Timeout), cfg.CountHeader)
		done := time.Now()
		prev = done
		w.lastDone = done
		if err != nil {
			w.fail(err)
			conn.Close()
			conn = nil
			continue
		}
		w.lat = append(w.lat, done.Sub(from))
		if status >= 200 && status < 300 {
			w.ok++
		} else {
			w.non2xx++
			if len(w.errSamp) < 2 {
				w.errSamp = append(w.errSamp, fmt.Sprintf("status %d", status))
			}
		}
		if cfg.CountHeader != "" {
			w.byHeader[inst]++
		}
		if !keep {
			conn.Close()
			conn = nil
		}
	}
}

// roundTrip writes one request and reads its whole answer.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte, deadline time.Time, countHeader string) (status int, header string, keep bool, err error) {
	if err := conn.SetDeadline(deadline); err != nil {
		return 0, "", false, err
	}
	if _, err := conn.Write(req); err != nil {
		return 0, "", false, fmt.Errorf("writing request: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", false, fmt.Errorf("reading answer: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, "", false, fmt.Errorf("reading body: %w", err)
	}
	if countHeader != "" {
		header = resp.Header.Get(countHeader)
	}
	return resp.StatusCode, header, !resp.Close, nil
}
