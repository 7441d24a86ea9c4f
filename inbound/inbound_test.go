package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/certs/certstest"
)

const td = "aaaaaaaa-0000-0000-0000-000000000001.consul"

// fakeAuthz answers ConnectAuthorize from a set of denied caller URIs.
type fakeAuthz struct {
	mu     sync.Mutex
	denied map[string]bool
	err    error
	calls  atomic.Int32
	last   api.AgentAuthorizeParams
}

func (f *fakeAuthz) ConnectAuthorize(p *api.AgentAuthorizeParams) (*api.AgentAuthorize, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = *p
	if f.err != nil {
		return nil, f.err
	}
	if f.denied[p.ClientCertURI] {
		return &api.AgentAuthorize{Authorized: false, Reason: "Matched L4 intention: deny"}, nil
	}
	return &api.AgentAuthorize{Authorized: true, Reason: "Default behavior configured by ACLs"}, nil
}

func (f *fakeAuthz) set(uri string, deny bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.denied == nil {
		f.denied = map[string]bool{}
	}
	f.denied[uri] = deny
	f.err = err
}

// lab is an inbound listener in front of an app, with a mesh CA.
type lab struct {
	ca     *certstest.CA
	authz  *fakeAuthz
	l      *Listener
	logs   *certstest.LogBuffer
	accept atomic.Int32 // connections the app accepted
}

// newLab starts an inbound listener for "web" in front of app (a
// listener the test serves), with short decision TTL and recheck.
func newLab(t *testing.T, app net.Listener, mod func(*Config)) *lab {
	t.Helper()
	lb := &lab{ca: certstest.NewCA(t, "ca", td), authz: &fakeAuthz{}, logs: &certstest.LogBuffer{}}
	fc := certstest.NewConsul(lb.ca)
	fc.SetLeaf("web", lb.ca.Sign(t, certstest.Leaf{Service: "web"}))
	log := slog.New(slog.NewTextHandler(lb.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := certs.New(certs.Config{Consul: fc, Service: "web", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mdone := make(chan struct{})
	go func() { m.Run(ctx); close(mdone) }()
	<-m.Ready()
	cfg := Config{Listen: "127.0.0.1:0", App: app.Addr().String(), Service: "web", TLS: m, Consul: lb.authz,
		DecisionTTL: 200 * time.Millisecond, Recheck: 200 * time.Millisecond, Log: log}
	if mod != nil {
		mod(&cfg)
	}
	if lb.l, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	sdone := make(chan error, 1)
	go func() { sdone <- lb.l.Serve(ctx) }()
	<-lb.l.Bound()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		lb.l.Shutdown(sctx)
		scancel()
		cancel()
		if err := <-sdone; err != nil {
			t.Errorf("serve: %v", err)
		}
		<-mdone
		if t.Failed() {
			t.Logf("log:\n%s", lb.logs)
		}
	})
	return lb
}

// client returns a TLS config presenting a leaf of service from the lab's CA.
func (lb *lab) client(t *testing.T, service string) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{certstest.TLSCert(t, lb.ca.Sign(t, certstest.Leaf{Service: service}))}}
}

func (lb *lab) dial(t *testing.T, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", lb.l.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// echoApp echoes each line back, and after EOF answers "bye N" (the bytes
// it read) and closes: a client sees its half-close honoured.
func echoApp(t *testing.T, accepted *atomic.Int32) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted != nil {
				accepted.Add(1)
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				n := 0
				for {
					line, err := r.ReadString('\n')
					n += len(line)
					if err != nil {
						fmt.Fprintf(c, "bye %d\n", n)
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln
}

// Raw TCP with a half-close passes both ways: the caller's close_notify
// reaches the app as EOF, the app's answer after it reaches the caller,
// then the app's close.
func TestRawTCPWithHalfClose(t *testing.T) {
	var accepted atomic.Int32
	lb := newLab(t, echoApp(t, &accepted), nil)
	c, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, line := range []string{"hello\n", "world\n"} {
		c.Write([]byte(line))
		if got, err := r.ReadString('\n'); got != line || err != nil {
			t.Fatalf("echo %q, %v; want %q", got, err, line)
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if string(rest) != "bye 12\n" || err != nil {
		t.Errorf("after half-close: %q, %v; want %q and EOF", rest, err, "bye 12\n")
	}
	if lb.authz.last.Target != "web" || lb.authz.last.ClientCertURI != lb.ca.URI("web-client", "dc1") || !serialRE.MatchString(lb.authz.last.ClientCertSerial) {
		t.Errorf("consul was asked %+v", lb.authz.last)
	}
}

func TestHTTP1AndHTTP2(t *testing.T) {
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(appLn)
	t.Cleanup(func() { srv.Close() })
	lb := newLab(t, appLn, nil)
	ccfg := lb.client(t, "web-client")

	for _, tc := range []struct {
		name string
		h2   bool
		want string
	}{{"HTTP/1.1", false, "HTTP/1.1 /x"}, {"HTTP/2 (prior knowledge)", true, "HTTP/2.0 /x"}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{
				// The connection is TLS to inbound; what runs inside it is
				// what the app speaks, so the transport sees plain text.
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return lb.dial(t, ccfg) },
			}
			tr.Protocols = new(http.Protocols)
			if tc.h2 {
				tr.Protocols.SetUnencryptedHTTP2(true)
			} else {
				tr.Protocols.SetHTTP1(true)
			}
			defer tr.CloseIdleConnections()
			for range 3 {
				resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://web/x")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != tc.want {
					t.Errorf("answer %q, want %q", b, tc.want)
				}
			}
		})
	}
}

// Each bad caller is refused before anything reaches the app, and logged
// with its identity and a reason; the listener keeps serving good callers.
func TestRefusals(t *testing.T) {
	var accepted atomic.Int32
	var mu sync.Mutex
	var reasons []string // as Config.Refused is told them
	lb := newLab(t, echoApp(t, &accepted), func(c *Config) {
		c.Refused = func(reason string) {
			mu.Lock()
			reasons = append(reasons, reason)
			mu.Unlock()
		}
	})
	other := certstest.NewCA(t, "other", td)
	lb.authz.set(lb.ca.URI("intruder", "dc1"), true, nil)
	for _, tc := range []struct {
		name string
		send func(t *testing.T, c net.Conn)
		log  []string // in the refusal's log line
	}{
		{"plain TCP, closed at once", func(t *testing.T, c net.Conn) {}, []string{`peer=none`, `reason=closed-before-handshake`}},
		{"garbage bytes", func(t *testing.T, c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n")) }, []string{`peer=none`, "does not look like a TLS handshake"}},
		{"no client certificate", tlsAs(&tls.Config{InsecureSkipVerify: true}), []string{`peer=none`, "didn't provide a certificate"}},
		{"certificate of another CA", tlsAs(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{
			certstest.TLSCert(t, other.Sign(t, certstest.Leaf{Service: "web-client"}))}}), []string{other.URI("web-client", "dc1"), "unknown authority"}},
		{"expired certificate", tlsAs(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{
			certstest.TLSCert(t, lb.ca.Sign(t, certstest.Leaf{Service: "old", NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}))}}),
			[]string{lb.ca.URI("old", "dc1"), "expired"}},
		{"denied by intentions", tlsAs(lb.client(t, "intruder")), []string{lb.ca.URI("intruder", "dc1"), "reason=intentions", "Matched L4 intention: deny"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(lb.logs.String())
			c, err := net.Dial("tcp", lb.l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			tc.send(t, c)
			if tcp, ok := c.(*net.TCPConn); ok {
				tcp.CloseWrite()
			}
			io.Copy(io.Discard, c) // until the listener closes it
			c.Close()
			var line string
			deadline := time.Now().Add(3 * time.Second)
			for line == "" && time.Now().Before(deadline) {
				for _, l := range strings.Split(lb.logs.String()[before:], "\n") {
					if strings.Contains(l, "inbound: refused") {
						line = l
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			if line == "" {
				t.Fatal("no refusal logged")
			}
			for _, want := range tc.log {
				if !strings.Contains(line, want) {
					t.Errorf("refusal %q lacks %q", line, want)
				}
			}
		})
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the app got %d connections from refused callers", n)
	}
	mu.Lock()
	if got := strings.Join(reasons, ","); got != "closed-before-handshake,tls,tls,tls,tls,intentions" {
		t.Errorf("Refused was told %q, want each refusal's reason once", got)
	}
	mu.Unlock()
	c, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatalf("a good caller after the bad ones: %v", err)
	}
	c.Write([]byte("ok\n"))
	if got, _ := bufio.NewReader(c).ReadString('\n'); got != "ok\n" {
		t.Errorf("good caller got %q", got)
	}
	c.Close()
}

// exchange sends a line through the echo app and reads it back.
func exchange(t *testing.T, c net.Conn) {
	t.Helper()
	c.Write([]byte("ping\n"))
	if got, err := bufio.NewReader(c).ReadString('\n'); got != "ping\n" {
		t.Errorf("echo: %q, %v", got, err)
	}
}

func tlsAs(cfg *tls.Config) func(t *testing.T, c net.Conn) {
	return func(t *testing.T, c net.Conn) {
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err == nil {
			// TLS 1.3: the refusal comes after the client's handshake.
			tc.Write([]byte("x\n"))
			if _, err := tc.Read(make([]byte, 1)); err == nil {
				t.Error("a refused caller read from the app")
			}
		}
	}
}

// A deny decides new connections within the decision TTL and closes open
// ones within Recheck + TTL; other callers' connections stay.
func TestDenyClosesOpenConnections(t *testing.T) {
	lb := newLab(t, echoApp(t, nil), nil)
	uri := lb.ca.URI("web-client", "dc1")
	victim, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatal(err)
	}
	bystander, err := lb.dial(t, lb.client(t, "billing"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tls.Conn{victim, bystander} {
		c.Write([]byte("hi\n"))
		if got, _ := bufio.NewReader(c).ReadString('\n'); got != "hi\n" {
			t.Fatalf("before the deny: %q", got)
		}
	}
	closed := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, victim)
		closed <- time.Now()
	}()
	lb.authz.set(uri, true, nil)
	denied := time.Now()

	// New connections: refused within the TTL (200ms here).
	var refusedAfter time.Duration
	for time.Since(denied) < 2*time.Second {
		c, err := lb.dial(t, lb.client(t, "web-client"))
		if err == nil {
			c.Write([]byte("x\n"))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err != nil {
			refusedAfter = time.Since(denied)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if refusedAfter == 0 || refusedAfter > time.Second {
		t.Errorf("new connections refused after %v, want within the 200ms TTL (+ slack)", refusedAfter)
	}
	select {
	case at := <-closed:
		d := at.Sub(denied)
		t.Logf("deny to refusal of new connections %v, to close of the open one %v", refusedAfter, d)
		if d > 2*time.Second {
			t.Errorf("open connection closed %v after the deny, want within Recheck+TTL (400ms) + slack", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("open connection of a denied caller not closed")
	}
	if !strings.Contains(lb.logs.String(), "closing a connection that intentions now deny") {
		t.Error("close not logged")
	}
	bystander.Write([]byte("still\n"))
	if got, _ := bufio.NewReader(bystander).ReadString('\n'); got != "still\n" {
		t.Errorf("other caller's connection after the deny: %q", got)
	}
	bystander.Close()
}

// A burst from one caller costs one question to Consul; after the TTL the
// next connection asks again.
func TestDecisionCache(t *testing.T) {
	lb := newLab(t, echoApp(t, nil), func(c *Config) { c.DecisionTTL = time.Second; c.Recheck = time.Hour })
	ccfg := lb.client(t, "web-client")
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := lb.dial(t, ccfg)
			if err != nil {
				t.Error(err)
				return
			}
			exchange(t, c) // the server authorized it once this is done
			c.Close()
		}()
	}
	wg.Wait()
	if n := lb.authz.calls.Load(); n != 1 {
		t.Errorf("%d questions to consul for a burst of 20 connections of one caller, want 1", n)
	}
	time.Sleep(1100 * time.Millisecond)
	c, err := lb.dial(t, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, c)
	c.Close()
	if n := lb.authz.calls.Load(); n != 2 {
		t.Errorf("%d questions after the TTL, want 2", n)
	}
}

// Consul failing: a caller decided before keeps its last decision; a new
// caller is refused with the reason; open connections stay.
func TestConsulFailing(t *testing.T) {
	lb := newLab(t, echoApp(t, nil), nil)
	known, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatal(err)
	}
	defer known.Close()
	known.Write([]byte("0\n")) // the server has authorized it once this comes back
	if got, _ := bufio.NewReader(known).ReadString('\n'); got != "0\n" {
		t.Fatalf("before consul failed: %q", got)
	}
	lb.authz.set("", false, errors.New("connection refused"))
	time.Sleep(600 * time.Millisecond) // a few rechecks fail
	known.Write([]byte("a\n"))
	if got, _ := bufio.NewReader(known).ReadString('\n'); got != "a\n" {
		t.Errorf("open connection after consul failed: %q", got)
	}
	c, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatalf("known caller refused while consul fails: %v", err)
	}
	c.Close()
	c, err = lb.dial(t, lb.client(t, "stranger"))
	if err == nil {
		c.Write([]byte("x\n"))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Error("a caller never decided was let in while consul fails")
	}
	if !strings.Contains(lb.logs.String(), "reason=consul") {
		t.Error("refusal for want of consul's answer not logged as such")
	}
}

// Shutdown waits for live connections until its deadline, then closes
// them; with none it returns at once.
func TestShutdown(t *testing.T) {
	lb := newLab(t, echoApp(t, nil), nil)
	c, err := lb.dial(t, lb.client(t, "web-client"))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("a\n"))
	bufio.NewReader(c).ReadString('\n')
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = lb.l.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 250*time.Millisecond {
		t.Errorf("shutdown with a live connection: %v after %v", err, time.Since(start))
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after a forced shutdown")
	}
	if _, err := net.DialTimeout("tcp", lb.l.Addr().String(), time.Second); err == nil {
		t.Error("still accepting after shutdown")
	}
	start = time.Now()
	if err := lb.l.Shutdown(context.Background()); err != nil || time.Since(start) > 100*time.Millisecond {
		t.Errorf("second shutdown: %v after %v", err, time.Since(start))
	}
}

func TestAppUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ln.Close() // nothing listens there now
	lb := newLab(t, ln, nil)
	c, err := lb.dial(t, lb.client(t, "web-client"))
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Error("read from an unreachable app")
	}
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(lb.logs.String(), "app unreachable") {
		if time.Now().After(deadline) {
			t.Fatal("not logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNewChecksConfig(t *testing.T) {
	good := Config{Listen: ":0", App: "127.0.0.1:1", Service: "web", TLS: nopTLS{}, Consul: &fakeAuthz{}}
	for _, mod := range []func(*Config){
		func(c *Config) { c.Listen = "" }, func(c *Config) { c.App = "" }, func(c *Config) { c.Service = "" },
		func(c *Config) { c.TLS = nil }, func(c *Config) { c.Consul = nil },
	} {
		c := good
		mod(&c)
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	if _, err := New(good); err != nil {
		t.Error(err)
	}
}

// serialRE is how Consul writes serials: hex bytes joined by colons.
var serialRE = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2})*$`)

type nopTLS struct{}

func (nopTLS) ServerConfig(certs.Authorize) *tls.Config { return &tls.Config{} }
