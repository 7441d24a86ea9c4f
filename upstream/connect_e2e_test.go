package upstream_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs"
	"github.com/meshlet/meshlet/certs/certstest"
	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// The tests of mTLS toward instances drive the whole outbound path over
// real TLS: leaves from a throwaway CA, certs' own client and server
// configs, sidecars that terminate mTLS in front of an HTTP instance, and
// a fake Consul that lists them in /v1/health/connect/web.

const (
	connectPath    = "/v1/health/connect/web"
	intentionsPath = "/v1/connect/intentions/match"
)

// mtlsKit is a throwaway Connect CA and the trust material of the
// services the tests use.
type mtlsKit struct {
	ca *certstest.CA
	cc *certstest.Consul

	mu       sync.Mutex
	managers map[string]*certs.Manager
}

func newMTLSKit(t testing.TB) *mtlsKit {
	ca := certstest.NewCA(t, "ca1", "11111111-2222-3333-4444-555555555555.consul")
	return &mtlsKit{ca: ca, cc: certstest.NewConsul(ca), managers: map[string]*certs.Manager{}}
}

// manager returns a running certs.Manager for service, ready unless
// noLeaf (its leaf then comes with giveLeaf).
func (k *mtlsKit) manager(t testing.TB, service string, noLeaf bool) *certs.Manager {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if m := k.managers[service]; m != nil {
		return m
	}
	if !noLeaf {
		k.cc.SetLeaf(service, k.ca.Sign(t, certstest.Leaf{Service: service}))
	}
	m, err := certs.New(certs.Config{Consul: k.cc, Service: service, Log: upstreamtest.Logger(t),
		Backoff: func(int) time.Duration { return 10 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if !noLeaf {
		select {
		case <-m.Ready():
		case <-time.After(5 * time.Second):
			t.Fatalf("no leaf for %s: %+v", service, m.Snapshot())
		}
	}
	k.managers[service] = m
	return m
}

func (k *mtlsKit) giveLeaf(t *testing.T, service string) {
	k.cc.SetLeaf(service, k.ca.Sign(t, certstest.Leaf{Service: service}))
}

// sidecar is an mTLS endpoint with identity in front of an HTTP instance
// named name (Connect-native, as far as a caller can tell).
type sidecar struct {
	addr     string
	requests atomic.Int64 // requests the instance behind it served
	accepted atomic.Int64 // TCP connections accepted
	open     atomic.Int64 // and not closed yet
	mu       sync.Mutex
	conns    []net.Conn
	ln       net.Listener
}

func (k *mtlsKit) sidecar(t testing.TB, identity, name string) *sidecar {
	t.Helper()
	conf := k.manager(t, identity, false).ServerConfig(nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{addr: ln.Addr().String(), ln: ln}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			io.Copy(io.Discard, r.Body)
			w.Header().Set("X-Instance", name)
			fmt.Fprintf(w, "%s %s", name, r.URL.Path)
		}),
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
		ConnState: func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.accepted.Add(1)
				s.open.Add(1)
				s.mu.Lock()
				s.conns = append(s.conns, c)
				s.mu.Unlock()
			case http.StateClosed, http.StateHijacked:
				s.open.Add(-1)
			}
		},
	}
	go srv.Serve(tls.NewListener(ln, conf))
	t.Cleanup(func() { srv.Close() })
	return s
}

// sidecarEntry is the Consul registration of a Connect sidecar proxy of
// the app instance appID (on node "node-"+appID, as upstreamtest.Instance
// registers it) listening at addr.
func sidecarEntry(t testing.TB, appID, addr string) *api.ServiceEntry {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var p int
	fmt.Sscan(port, &p)
	return &api.ServiceEntry{
		Node: &api.Node{Node: "node-" + appID, Address: host},
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: appID + "-sidecar-proxy", Service: "web-sidecar-proxy",
			Address: host, Port: p, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", DestinationServiceID: appID}},
	}
}

// mtlsMesh serves "web" with instances and the sidecars in connect, in
// mode, with client as the app's identity.
func mtlsMesh(t testing.TB, mode upstream.MTLSMode, client upstream.ClientTLS, tweak func(*upstream.Config),
	instances []*api.ServiceEntry, connect ...*api.ServiceEntry) (*upstreamtest.FakeConsul, *upstream.Mesh, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	if connect == nil {
		connect = []*api.ServiceEntry{}
	}
	fc.Set(connectPath, upstreamtest.FakeAnswer{Index: 3, Body: connect})
	setIntentions(fc, 5)
	m := upstreamtest.NewMesh(t, fc, func(c *upstream.Config) {
		c.MTLS, c.ClientTLS = mode, client
		if tweak != nil {
			tweak(c)
		}
	})
	return fc, m, outboundFront(t, m)
}

// setIntentions makes ixns the intentions toward web, at index.
func setIntentions(fc *upstreamtest.FakeConsul, index uint64, ixns ...*api.Intention) {
	if ixns == nil {
		ixns = []*api.Intention{}
	}
	fc.Set(intentionsPath, upstreamtest.FakeAnswer{Index: index, Body: map[string][]*api.Intention{"web": ixns}})
}

// get makes one request for web.local through front on c and returns the
// status, X-Instance (or X-Meshlet-Error) and body.
func get(t *testing.T, c *http.Client) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://web.local/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if e := resp.Header.Get("X-Meshlet-Error"); e != "" {
		return resp.StatusCode, e, string(b)
	}
	return resp.StatusCode, resp.Header.Get("X-Instance"), string(b)
}

// Three instances reached only through their sidecars (their own
// addresses are dead): requests spread over all three over mTLS, one
// endpoint per instance, and pooled connections resume nothing but are
// reused.
func TestMTLSSpreadOverSidecars(t *testing.T) {
	k := newMTLSKit(t)
	var insts, conns []*api.ServiceEntry
	cars := map[string]*sidecar{}
	for _, id := range []string{"a", "b", "c"} {
		cars[id] = k.sidecar(t, "web", id)
		insts = append(insts, upstreamtest.Instance(t, "web", id, upstreamtest.DeadAddr(t)))
		conns = append(conns, sidecarEntry(t, id, cars[id].addr))
	}
	_, m, front := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false), nil, insts, conns...)
	c := upstreamtest.Client(front)
	seen := map[string]int{}
	for range 30 {
		status, who, body := get(t, c)
		if status != http.StatusOK {
			t.Fatalf("status %d %s: %s", status, who, body)
		}
		seen[who]++
	}
	for id, car := range cars {
		if seen[id] != 10 {
			t.Errorf("instance %s got %d of 30 requests, want 10 (round-robin): %v", id, seen[id], seen)
		}
		if car.accepted.Load() == 0 || car.accepted.Load() > 3 {
			t.Errorf("sidecar %s accepted %d connections for 10 requests on one app connection, want pooled ones", id, car.accepted.Load())
		}
	}
	eps := m.Endpoints("web")
	if len(eps) != 3 {
		t.Fatalf("endpoints %+v, want the 3 instances", eps)
	}
	for _, e := range eps {
		if !e.MTLS || e.Addr != cars[e.ID].addr || e.AppAddr == "" {
			t.Errorf("endpoint %+v: want MTLS at its sidecar %s", e, cars[e.ID].addr)
		}
	}
	if st := m.MTLSStats(); st.Handshakes < 3 || st.Failed != 0 {
		t.Errorf("stats %+v: want at least 3 handshakes and no failure", st)
	}
}

// A second connection to an instance resumes the first one's session.
func TestMTLSResumesSessions(t *testing.T) {
	k := newMTLSKit(t)
	car := k.sidecar(t, "web", "a")
	_, m, front := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false), nil,
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))}, sidecarEntry(t, "a", car.addr))
	for i := range 4 {
		// A new app connection with Connection: close each time: the
		// forwarder keeps the instance connection, so close it at the
		// sidecar to force a new one.
		if status, who, _ := get(t, upstreamtest.Client(front)); status != 200 {
			t.Fatalf("request %d: %d %s", i, status, who)
		}
		car.mu.Lock()
		for _, c := range car.conns {
			c.Close()
		}
		car.conns = nil
		car.mu.Unlock()
	}
	st := m.MTLSStats()
	if st.Handshakes < 4 || st.Resumed < st.Handshakes-1 {
		t.Errorf("stats %+v: want every handshake after the first resumed", st)
	}
}

// Permissive: an instance with a sidecar is reached over mTLS, one
// without in plaintext. Strict: only the first; a service with none
// gets a fast 503 that says why.
func TestMTLSModes(t *testing.T) {
	k := newMTLSKit(t)
	car := k.sidecar(t, "web", "tls")
	plain := upstreamtest.WhoAmI(t, "plain")
	insts := []*api.ServiceEntry{
		upstreamtest.Instance(t, "web", "tls", upstreamtest.DeadAddr(t)),
		upstreamtest.Instance(t, "web", "plain", upstreamtest.AddrOf(plain)),
	}
	client := k.manager(t, "web-client", false)
	t.Run("permissive", func(t *testing.T) {
		_, _, front := mtlsMesh(t, upstream.MTLSPermissive, client, nil, insts, sidecarEntry(t, "tls", car.addr))
		seen := map[string]int{}
		for range 10 {
			_, who, _ := get(t, upstreamtest.Client(front))
			seen[who]++
		}
		if seen["tls"] != 5 || seen["plain"] != 5 {
			t.Errorf("answers %v, want 5 from each instance", seen)
		}
	})
	t.Run("strict", func(t *testing.T) {
		_, _, front := mtlsMesh(t, upstream.MTLSStrict, client, nil, insts, sidecarEntry(t, "tls", car.addr))
		for range 6 {
			if status, who, body := get(t, upstreamtest.Client(front)); status != 200 || who != "tls" {
				t.Fatalf("answer %d %s %q, want only the mTLS instance", status, who, body)
			}
		}
	})
	t.Run("strict without sidecars", func(t *testing.T) {
		_, _, front := mtlsMesh(t, upstream.MTLSStrict, client, nil, insts[1:])
		start := time.Now()
		status, code, body := get(t, upstreamtest.Client(front))
		if status != http.StatusServiceUnavailable || code != upstream.ErrCodeNoMTLS ||
			!strings.Contains(body, "strict mTLS: none of the 1 registered instances") {
			t.Errorf("answer %d %s %q, want 503 no-mtls-instance with the reason", status, code, body)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the refusal took %v, want it fast", d)
		}
	})
	t.Run("off", func(t *testing.T) {
		_, _, front := mtlsMesh(t, upstream.MTLSOff, client, nil, insts[1:], sidecarEntry(t, "plain", car.addr))
		if status, who, _ := get(t, upstreamtest.Client(front)); status != 200 || who != "plain" {
			t.Errorf("answer %d %s, want plaintext to the instance itself", status, who)
		}
	})
}

// Before the leaf arrives, permissive goes in plaintext and strict
// refuses with the reason; once it arrives, both use mTLS.
func TestMTLSIdentityArrivesLater(t *testing.T) {
	k := newMTLSKit(t)
	car := k.sidecar(t, "web", "i-tls")
	plain := upstreamtest.WhoAmI(t, "i-plain")
	// One instance, registered at plain's address, whose sidecar answers
	// as "i-tls": the answer tells which path a request took.
	insts := []*api.ServiceEntry{upstreamtest.Instance(t, "web", "i", upstreamtest.AddrOf(plain))}
	client := k.manager(t, "late-client", true)
	_, _, permissive := mtlsMesh(t, upstream.MTLSPermissive, client, nil, insts, sidecarEntry(t, "i", car.addr))
	_, _, strict := mtlsMesh(t, upstream.MTLSStrict, client, nil, insts, sidecarEntry(t, "i", car.addr))
	if _, who, _ := get(t, upstreamtest.Client(permissive)); who != "i-plain" {
		t.Errorf("permissive without identity: answered by %q, want plaintext", who)
	}
	status, code, body := get(t, upstreamtest.Client(strict))
	if status != 503 || code != upstream.ErrCodeNoMTLS || !strings.Contains(body, "no identity") {
		t.Errorf("strict without identity: %d %s %q, want 503 no-mtls-instance naming the missing identity", status, code, body)
	}
	k.giveLeaf(t, "late-client")
	for name, front := range map[string]*upstreamtest.Front{"permissive": permissive, "strict": strict} {
		upstreamtest.Eventually(t, name+" to use mTLS once the leaf is there", func() bool {
			_, who, _ := get(t, upstreamtest.Client(front))
			return who == "i-tls"
		})
	}
}

// A sidecar that presents another service's identity is refused at the
// handshake: nothing reaches it, the request goes to another instance,
// and the log names the reason.
func TestMTLSWrongServerIdentity(t *testing.T) {
	k := newMTLSKit(t)
	good, bad := k.sidecar(t, "web", "good"), k.sidecar(t, "db", "impostor")
	var logged strings.Builder
	var mu sync.Mutex
	_, m, front := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), func(c *upstream.Config) {
		c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, nil))
	}, []*api.ServiceEntry{
		upstreamtest.Instance(t, "web", "good", upstreamtest.DeadAddr(t)),
		upstreamtest.Instance(t, "web", "bad", upstreamtest.DeadAddr(t)),
	}, sidecarEntry(t, "good", good.addr), sidecarEntry(t, "bad", bad.addr))
	for range 6 {
		if status, who, body := get(t, upstreamtest.Client(front)); status != 200 || who != "good" {
			t.Fatalf("answer %d %s %q, want the good instance (the other refused and retried)", status, who, body)
		}
	}
	if n := bad.requests.Load(); n != 0 {
		t.Errorf("the impostor served %d requests, want none", n)
	}
	if st := m.MTLSStats(); st.Failed == 0 {
		t.Errorf("stats %+v: want the failed handshakes counted", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logged.String(), "reason=\"wrong server identity\"") {
		t.Errorf("log does not name the reason:\n%s", logged.String())
	}
}

// A deny intention for the app's identity refuses new requests with a
// 403 that names it, and closes the pooled connections, within a
// second; an allow (or the deny removed) lets requests through again.
// Raw TCP connections are closed.
func TestMTLSCallerSideIntentions(t *testing.T) {
	k := newMTLSKit(t)
	car := k.sidecar(t, "web", "a")
	fc, m, front := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false), nil,
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", upstreamtest.DeadAddr(t))}, sidecarEntry(t, "a", car.addr))
	c := upstreamtest.Client(front)
	if status, who, _ := get(t, c); status != 200 {
		t.Fatalf("before any intention: %d %s", status, who)
	}
	before := car.accepted.Load()

	deny := &api.Intention{SourceName: "web-client", DestinationName: "web", Action: api.IntentionActionDeny, Precedence: 9}
	other := &api.Intention{SourceName: "other", DestinationName: "web", Action: api.IntentionActionAllow, Precedence: 9}
	wildAllow := &api.Intention{SourceName: "*", DestinationName: "web", Action: api.IntentionActionAllow, Precedence: 8}
	setIntentions(fc, 6, other, deny, wildAllow)
	start := time.Now()
	var status int
	var code, body string
	upstreamtest.Eventually(t, "the deny to refuse requests", func() bool {
		status, code, body = get(t, c)
		return status != 200
	})
	if took := time.Since(start); took > time.Second {
		t.Errorf("the deny took %v to act, want under a second", took)
	}
	if status != http.StatusForbidden || code != upstream.ErrCodeDenied || !strings.Contains(body, "web-client => web (deny)") {
		t.Errorf("denied answer %d %s %q, want 403 naming the intention", status, code, body)
	}
	upstreamtest.Eventually(t, "the connections to the denied service to be closed", func() bool { return car.open.Load() == 0 })
	if car.accepted.Load() != before {
		t.Errorf("requests after the deny reached the sidecar (%d connections, %d before)", car.accepted.Load(), before)
	}
	// Raw TCP: the connection is closed at once.
	raw := dialRawWeb(t, m, front)
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Errorf("a raw connection to the denied service got bytes")
	}

	setIntentions(fc, 7, wildAllow)
	upstreamtest.Eventually(t, "requests to be allowed again", func() bool {
		status, _, _ := get(t, c)
		return status == 200
	})
}

// dialRawWeb opens an app connection that sends nothing the sniffer takes
// for HTTP (so it is proxied as raw TCP) and returns it with a deadline.
func dialRawWeb(t *testing.T, _ *upstream.Mesh, front *upstreamtest.Front) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write([]byte("\x16\x03\x01 not http\n"))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// A large upload to an instance that reads it slowly goes through whole
// over mTLS, although the forwarder writes in slices of a deadline
// (which would break a plain tls.Conn for good).
func TestMTLSSlowReaderUpload(t *testing.T) {
	k := newMTLSKit(t)
	conf := k.manager(t, "web", false).ServerConfig(nil)
	// Small socket buffers on both sides, so that the forwarder's writes
	// wait on the reader rather than fill the kernel's.
	small := func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10)
		})
	}
	ln, err := (&net.ListenConfig{Control: small}).Listen(context.Background(), "tcp", "127.0.0.1:0")
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
			go func() {
				defer c.Close()
				tc := tls.Server(c, conf)
				br := bufio.NewReader(tc)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				var n int64
				buf := make([]byte, 64<<10)
				for {
					time.Sleep(4 * time.Millisecond) // a slow reader (16 KiB records): the sockets fill up
					k, err := req.Body.Read(buf)
					n += int64(k)
					if err != nil {
						break
					}
				}
				fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nX-Instance: slow\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%d", len(fmt.Sprint(n)), n)
			}()
		}
	}()
	_, _, front := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), func(c *upstream.Config) {
		c.Dialer = &net.Dialer{Timeout: 2 * time.Second, Control: small}
	}, []*api.ServiceEntry{upstreamtest.Instance(t, "web", "s", upstreamtest.DeadAddr(t))}, sidecarEntry(t, "s", ln.Addr().String()))
	const size = 6 << 20 // some 1.5 s to read: past the forwarder's first write slice (1 s)
	req, _ := http.NewRequest(http.MethodPost, "http://web.local/upload", strings.NewReader(strings.Repeat("x", size)))
	resp, err := upstreamtest.Client(front).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != fmt.Sprint(size) {
		t.Errorf("answer %d %q (%s), want 200 and all %d bytes received", resp.StatusCode, b, resp.Header.Get("X-Meshlet-Error"), size)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Raw TCP over mTLS: the bytes go both ways through the sidecar, and the
// app's half-close reaches the instance (the TLS close_notify and the FIN
// both).
func TestMTLSRawTCP(t *testing.T) {
	k := newMTLSKit(t)
	conf := k.manager(t, "web", false).ServerConfig(nil)
	addr := upstreamtest.TCPServer(t, func(c *net.TCPConn) {
		tc := tls.Server(c, conf)
		b, _ := io.ReadAll(tc) // until the caller's half-close
		fmt.Fprintf(tc, "got %d bytes: %q", len(b), b)
	})
	_, _, front := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), nil,
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "r", upstreamtest.DeadAddr(t))}, sidecarEntry(t, "r", addr))
	c, err := net.Dial("tcp", front.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := "\x00\x01 not http at all\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if want := fmt.Sprintf("got %d bytes: %q", len(msg), msg); string(got) != want || err != nil {
		t.Errorf("answer %q (%v), want %q", got, err, want)
	}
}

// In permissive mode, intentions decide only for services that take part
// in Connect: a plaintext-only service is called as before a deny.
func TestMTLSIntentionsSparePlaintextServices(t *testing.T) {
	k := newMTLSKit(t)
	plain := upstreamtest.WhoAmI(t, "p")
	fc, _, front := mtlsMesh(t, upstream.MTLSPermissive, k.manager(t, "web-client", false), nil,
		[]*api.ServiceEntry{upstreamtest.Instance(t, "web", "p", upstreamtest.AddrOf(plain))})
	c := upstreamtest.Client(front)
	if status, who, _ := get(t, c); status != 200 {
		t.Fatalf("before the deny: %d %s", status, who)
	}
	setIntentions(fc, 6, &api.Intention{SourceName: "web-client", DestinationName: "web", Action: api.IntentionActionDeny, Precedence: 9})
	upstreamtest.Eventually(t, "the intention to be seen", func() bool {
		return slices.ContainsFunc(fc.IndexesSent(intentionsPath), func(i string) bool { return i == "6" })
	})
	if status, who, body := get(t, c); status != 200 || who != "p" {
		t.Errorf("plaintext-only service after a deny: %d %s %q, want it called as before", status, who, body)
	}
}

// A tag subset (v2.web) reaches its instances' sidecars as its service
// does: over mTLS, expecting the service's identity ("web", not
// "v2.web"), and a deny of the service covers the subset.
func TestMTLSSubsetUsesItsServicesIdentity(t *testing.T) {
	k := newMTLSKit(t)
	a, b := k.sidecar(t, "web", "a"), k.sidecar(t, "web", "b")
	insts := []*api.ServiceEntry{
		tagged(t, "a", upstreamtest.DeadAddr(t), "v1"),
		tagged(t, "b", upstreamtest.DeadAddr(t), "v2"),
	}
	fc, m, _ := mtlsMesh(t, upstream.MTLSStrict, k.manager(t, "web-client", false), nil, insts,
		sidecarEntry(t, "a", a.addr), sidecarEntry(t, "b", b.addr))
	fc.Set(upstreamtest.CatalogPath, upstreamtest.FakeAnswer{Index: 2, Body: map[string][]string{"web": {"v1", "v2"}}})
	upstreamtest.Eventually(t, "the subset v2", func() bool { ok, _ := m.SubsetExists("v2", "web"); return ok })
	name := upstream.SubsetName("v2", "web")
	m.Watch(name)
	upstreamtest.Eventually(t, "the subset's mTLS instance", func() bool {
		eps := m.Endpoints(name)
		return len(eps) == 1 && eps[0].ID == "b" && eps[0].MTLS && eps[0].Addr == b.addr
	})
	front := outboundFrontFor(t, m, name, "v2.web.local")
	c := upstreamtest.Client(front)
	for range 6 {
		if status, who, body := get(t, c); status != http.StatusOK || who != "b" {
			t.Fatalf("v2.web.local: %d %s %s; want 200 from b over mTLS", status, who, body)
		}
	}
	if a.requests.Load() != 0 || b.requests.Load() != 6 {
		t.Errorf("sidecars served a=%d b=%d, want 0 and 6", a.requests.Load(), b.requests.Load())
	}
	if st := m.MTLSStats(); st.Failed != 0 {
		t.Errorf("handshakes failed: %+v (the subset expected another identity?)", st)
	}
	setIntentions(fc, 9, &api.Intention{SourceName: "web-client", DestinationName: "web", Action: api.IntentionActionDeny, Precedence: 9})
	upstreamtest.Eventually(t, "the deny of web reaching v2.web", func() bool {
		status, code, _ := get(t, c)
		return status == http.StatusForbidden && code == upstream.ErrCodeDenied
	})
}
