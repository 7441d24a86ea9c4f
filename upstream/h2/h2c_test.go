package h2

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// h2cClient is an app that speaks prior-knowledge h2c to the front, over
// one connection, keeping cookies when jar is set.
func h2cClient(front *upstreamtest.Front, jar http.CookieJar) *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{
		Jar:     jar,
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Protocols: protocols,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", front.Addr)
			},
		},
	}
}

// trailerEcho is an instance that answers with its name and the request
// body, then the request's trailer X-Sum as its own trailer X-Sum-Seen.
func trailerEcho(t *testing.T, name string, h2 bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", name)
		w.Header().Set("Trailer", "X-Sum-Seen")
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
		w.Header().Set("X-Sum-Seen", r.Trailer.Get("X-Sum")+" "+r.Proto)
	}))
	if h2 {
		srv.Config.Protocols = new(http.Protocols)
		srv.Config.Protocols.SetUnencryptedHTTP2(true)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// An h2c app's requests to an HTTP/1.1 service are translated, and to a
// service declared http2 they stay HTTP/2; trailers pass both ways.
func TestH2cRequestsAndTrailers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h2      bool
		meta    []string
		wantVia string
	}{
		{"HTTP/1.1 instance", false, nil, "HTTP/1.1"},
		{"instance declared http2", true, []string{"meshlet-protocol", "http2"}, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := trailerEcho(t, "a", tc.h2)
			_, front := serveWeb(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(srv)), tc.meta...))
			client := h2cClient(front, nil)
			pr, pw := io.Pipe()
			req, _ := http.NewRequest(http.MethodPost, "http://web.local/echo", pr)
			req.Trailer = http.Header{"X-Sum": nil}
			go func() {
				io.WriteString(pw, "hello ")
				io.WriteString(pw, "world")
				req.Trailer.Set("X-Sum", "42")
				pw.Close()
			}()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != "hello world" || resp.ProtoMajor != 2 {
				t.Fatalf("%s %q, %v", resp.Proto, body, err)
			}
			if got := resp.Trailer.Get("X-Sum-Seen"); got != "42 "+tc.wantVia {
				t.Errorf("trailer X-Sum-Seen = %q, want the request's trailer seen over %s", got, tc.wantVia)
			}
		})
	}
}

// Requests on one h2c connection are balanced one by one, and an app
// that keeps cookies keeps its instance.
func TestH2cBalancingAndStickiness(t *testing.T) {
	a, b := upstreamtest.WhoAmI(t, "a"), upstreamtest.WhoAmI(t, "b")
	_, front := serveWeb(t, nil,
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(a)), "meshlet-sticky", "cookie"),
		upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)), "meshlet-sticky", "cookie"))

	plain := h2cClient(front, nil)
	seen := map[string]int{}
	for range 10 {
		resp, err := plain.Get("http://web.local/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		seen[resp.Header.Get("X-Instance")]++
		if !strings.HasPrefix(resp.Header.Get("Set-Cookie"), "meshlet-web=") {
			t.Errorf("no sticky cookie in %v", resp.Header)
		}
	}
	if seen["a"] != 5 || seen["b"] != 5 {
		t.Errorf("10 requests on one h2c connection went %v, want 5 and 5", seen)
	}

	jar, _ := cookiejar.New(nil)
	keeper := h2cClient(front, jar)
	first := ""
	for i := range 10 {
		resp, err := keeper.Get("http://web.local/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		inst := resp.Header.Get("X-Instance")
		if i == 0 {
			first = inst
		} else if inst != first || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("request %d went to %s (Set-Cookie %q), want %s and no new cookie", i, inst, resp.Header.Get("Set-Cookie"), first)
		}
	}
	if front.Accepted.Load() != 2 {
		t.Errorf("%d connections, want one per client", front.Accepted.Load())
	}
}

// An idempotent request whose instance fails before it answers is
// retried on another; meshlet's own answers to plain HTTP/2 are text
// with X-Meshlet-Error.
func TestH2cRetryAndErrors(t *testing.T) {
	b := upstreamtest.WhoAmI(t, "b")
	dead := upstreamtest.DeadAddr(t)
	_, front := serveWeb(t, nil, upstreamtest.Instance(t, "web", "dead", dead), upstreamtest.Instance(t, "web", "b", upstreamtest.AddrOf(b)))
	client := h2cClient(front, nil)
	for i := range 4 {
		resp, err := client.Get("http://web.local/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Instance") != "b" {
			t.Fatalf("request %d: %d from %q, want 200 from b", i, resp.StatusCode, resp.Header.Get("X-Instance"))
		}
	}

	_, empty := serveWeb(t, nil)
	resp, err := h2cClient(empty, nil).Get("http://web.local/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Meshlet-Error") != "no-healthy-instance" ||
		!strings.Contains(string(body), "no healthy instance") {
		t.Errorf("no instance: %d %q %q", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), body)
	}
}

// A call's grpc-timeout bounds it at meshlet too, even when the app's
// client does not enforce its own deadline: DEADLINE_EXCEEDED, in a
// trailers-only answer that names the grpc-timeout.
func TestGRPCTimeoutHeaderIsEnforced(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	_, front := serveWeb(t, nil, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", upstreamtest.AddrOf(srv)), "meshlet-protocol", "grpc"))
	req, _ := http.NewRequest(http.MethodPost, "http://web.local/grpc.testing.TestService/UnaryCall", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Grpc-Timeout", "200m")
	start := time.Now()
	resp, err := h2cClient(front, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the answer came after %v", d)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Grpc-Status") != "4" ||
		!strings.Contains(resp.Header.Get("Grpc-Message"), "grpc-timeout of 200ms") || resp.Header.Get("Content-Type") != "application/grpc" {
		t.Errorf("%d %v; want a trailers-only DEADLINE_EXCEEDED that names the grpc-timeout", resp.StatusCode, resp.Header)
	}
}
