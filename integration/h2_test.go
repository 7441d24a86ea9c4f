package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshlet/meshlet/integration/meshlab"
	"github.com/meshlet/meshlet/upstream/h2/h2test"
)

// grpcInstanceBin builds integration/testbin/grpcinstance once.
var grpcInstanceBin = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := meshlab.RepoRoot(ctx)
	if err != nil {
		return "", err
	}
	out := filepath.Join(filepath.Dir(bins.Meshlet), "grpcinstance")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./integration/testbin/grpcinstance")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building grpcinstance: %w: %s", err, o)
	}
	return out, nil
})

// needGRPCInstance builds grpcinstance, before the test's clocks start.
func needGRPCInstance(t *testing.T) {
	t.Helper()
	if _, err := grpcInstanceBin(); err != nil {
		t.Fatal(err)
	}
}

// h2Host is a host running grpcinstance: gRPC on 9090, HTTP/1.1 and h2c
// (with a WebSocket echo) on 8080, a server-first TCP banner on 2525.
type h2Host struct {
	*meshlab.Instance
}

// startH2Host starts grpcinstance in a new host of w.
func startH2Host(t *testing.T, w *meshlab.World, name string) h2Host {
	t.Helper()
	bin, err := grpcInstanceBin()
	if err != nil {
		t.Fatal(err)
	}
	h, err := w.Lab.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("grpcinstance", nil, bin, "-grpc", ":9090", "-http", ":8080", "-banner", ":2525", "-name", name)
	if err != nil {
		t.Fatal(err)
	}
	return h2Host{&meshlab.Instance{Name: name, Host: h, Proc: p}}
}

// register registers the host as an instance of service on port, with
// meta, checked by its HTTP health every second.
func (h h2Host) register(t *testing.T, w *meshlab.World, service string, port int, meta map[string]string) {
	t.Helper()
	err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: h.Name + "-" + service, Name: service, Address: h.Host.IP.String(), Port: port, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "check-" + h.Name + "-" + service, HTTP: h.URL("/health"), Interval: "1s", Timeout: "1s"},
	})
	if err != nil {
		t.Fatalf("registering %s as %s: %v", h.Name, service, err)
	}
}

// appGRPC is a gRPC channel of the app to service, through meshlet.
func appGRPC(t *testing.T, w *meshlab.World, service string) testpb.TestServiceClient {
	t.Helper()
	vip := resolveVIP(t, w, service+".local")
	cc, err := grpc.NewClient("passthrough:///"+service+".local",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return w.App.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 80).String())
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// appH2c is an HTTP client of the app that speaks prior-knowledge h2c to
// service through meshlet, over one connection.
func appH2c(t *testing.T, w *meshlab.World, service string, jar http.CookieJar) *http.Client {
	vip := resolveVIP(t, w, service+".local")
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{
		Protocols: protocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return w.App.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 80).String())
		},
	}}
}

// inLoops calls f in n goroutines, each at most 5000 times, until stop
// is closed.
func inLoops(n int, stop <-chan struct{}, f func()) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5000 {
				select {
				case <-stop:
					return
				default:
				}
				f()
			}
		}()
	}
	return &wg
}

// gRPC through the mesh, end to end with real gRPC clients and servers:
// per-call balancing over one channel, streaming both ways, the gRPC
// statuses of meshlet's own answers, stickiness for an HTTP/2 client,
// an instance stopped gracefully under load (no call fails), then one
// killed (new calls and idempotent requests do not fail).
func TestGRPCAndHTTP2ThroughTheMesh(t *testing.T) {
	needGRPCInstance(t)
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1})
	grpcMeta := map[string]string{"meshlet-protocol": "grpc"}
	h2Meta := map[string]string{"meshlet-protocol": "http2", "meshlet-sticky": "cookie", "meshlet-sticky-cookie": "CONTAINERID"}
	var hosts []h2Host
	for i := 1; i <= 3; i++ {
		h := startH2Host(t, w, fmt.Sprintf("g%d", i))
		h.register(t, w, "grpc", 9090, grpcMeta)
		h.register(t, w, "h2web", 8080, h2Meta)
		hosts = append(hosts, h)
	}
	hosts[0].register(t, w, "plain", 9090, nil) // gRPC, but not declared so
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, s := range []string{"grpc", "h2web"} {
		if err := w.WaitPassing(ctx, s, 3); err != nil {
			t.Fatal(err)
		}
	}
	client := appGRPC(t, w, "grpc")

	t.Run("300 unary calls over one channel are spread evenly", func(t *testing.T) {
		counts := map[string]int{}
		for i := range 300 {
			resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			counts[resp.GetHostname()]++
		}
		t.Logf("300 calls: %v", counts)
		for _, h := range hosts {
			if n := counts[h.Name]; n < 80 || n > 120 {
				t.Errorf("%s got %d of 300 calls, want 100 ± 20%%", h.Name, n)
			}
		}
	})

	t.Run("streaming both ways", func(t *testing.T) {
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{
			{Size: 10}, {Size: 100000, IntervalUs: 100000}, {Size: 1, IntervalUs: 100000}}})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []int{10, 100000, 1} {
			m, err := stream.Recv()
			if err != nil || len(m.GetPayload().GetBody()) != want {
				t.Fatalf("server stream message %d: %v", i, err)
			}
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of the server stream: %v", err)
		}
		duplex, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			size := int32(i * 3000)
			if err := duplex.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: size}}}); err != nil {
				t.Fatal(err)
			}
			if m, err := duplex.Recv(); err != nil || len(m.GetPayload().GetBody()) != int(size) {
				t.Fatalf("duplex answer %d: %v", i, err)
			}
		}
		duplex.CloseSend()
		if _, err := duplex.Recv(); err != io.EOF {
			t.Fatalf("end of the duplex stream: %v", err)
		}
		if got := duplex.Trailer().Get("x-instance"); len(got) != 1 {
			t.Errorf("duplex trailers: %v, want the instance's x-instance", duplex.Trailer())
		}
	})

	t.Run("meshlet's own answers are gRPC statuses", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := client.UnaryCall(metadata.AppendToOutgoingContext(short, h2test.DelayKey, "3000"), &testpb.SimpleRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("a call past its deadline: %v, want DEADLINE_EXCEEDED", err)
		}
		plain := appGRPC(t, w, "plain") // resolved now: "plain" leaves the catalog for a moment below
		_, err = plain.UnaryCall(ctx, &testpb.SimpleRequest{})
		if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "meshlet-protocol=grpc") {
			t.Errorf("a call to a service not declared HTTP/2: %v, want UNIMPLEMENTED naming meshlet-protocol=grpc", err)
		}
		// Its one instance critical: UNAVAILABLE, saying why. (Consul keeps
		// the status of a check re-registered under its ID: a new one.)
		if err := w.Consul.Agent().ServiceDeregister("g1-plain"); err != nil {
			t.Fatal(err)
		}
		if err := w.Consul.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "g1-plain", Name: "plain", Address: hosts[0].Host.IP.String(), Port: 9090,
			Meta: grpcMeta, Check: &api.AgentServiceCheck{CheckID: "check-g1-plain-ttl", TTL: "1h", Status: api.HealthPassing}}); err != nil {
			t.Fatal(err)
		}
		// Then a check that has run and failed (critical, with output; the
		// agent syncs a change of status at once, of output alone only
		// later): a check registered critical and never run would keep the
		// instance that passed before (the settle after a reset).
		if err := w.Consul.Agent().UpdateTTL("check-g1-plain-ttl", "down on purpose", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "UNAVAILABLE for a service with no healthy instance", func() bool {
			_, err := plain.UnaryCall(ctx, &testpb.SimpleRequest{})
			st := status.Convert(err)
			return st.Code() == codes.Unavailable && strings.Contains(st.Message(), "no healthy instance")
		})
	})

	t.Run("an HTTP/2 client that keeps cookies keeps its instance", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		keeper := appH2c(t, w, "h2web", jar)
		plain := appH2c(t, w, "h2web", nil)
		seen := map[string]int{}
		first := ""
		for i := range 30 {
			resp, err := keeper.Get("http://h2web.local/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if i == 0 {
				first = resp.Header.Get("X-Instance")
			} else if got := resp.Header.Get("X-Instance"); got != first || resp.ProtoMajor != 2 {
				t.Fatalf("request %d of the cookie-keeping client: %s from %s, want %s", i, resp.Proto, got, first)
			}
			resp, err = plain.Get("http://h2web.local/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			seen[resp.Header.Get("X-Instance")]++
		}
		if len(seen) != 3 {
			t.Errorf("30 requests of a client without cookies over one connection: %v, want all 3 instances", seen)
		}
	})

	t.Run("an instance stopped gracefully under load fails no call", func(t *testing.T) {
		var calls, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		wg := inLoops(8, stop, func() {
			_, err := client.UnaryCall(metadata.AppendToOutgoingContext(ctx, h2test.DelayKey, "20"), &testpb.SimpleRequest{})
			calls.Add(1)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		})
		waitFor(t, 10*time.Second, "calls to flow", func() bool { return calls.Load() > 100 })
		victim := hosts[2]
		if err := victim.Proc.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if exited, _ := victim.Proc.Wait(10 * time.Second); !exited {
			t.Fatal("grpcinstance did not stop within 10 s of SIGTERM")
		}
		after := calls.Load()
		waitFor(t, 20*time.Second, "300 more calls after the stop", func() bool { return calls.Load() > after+300 })
		close(stop)
		wg.Wait()
		t.Logf("GracefulStop under load: %d calls, %d failed", calls.Load(), failed.Load())
		if failed.Load() > 0 {
			t.Errorf("%d of %d calls failed; first: %v", failed.Load(), calls.Load(), firstErr.Load())
		}
	})

	t.Run("a killed instance: new calls succeed, idempotent requests are retried", func(t *testing.T) {
		h2c := appH2c(t, w, "h2web", nil)
		var getCount, getFailed, calls, callFailed atomic.Int64
		var killedAt atomic.Int64
		var lateErr atomic.Value
		stop := make(chan struct{})
		gets := inLoops(4, stop, func() {
			resp, err := h2c.Get("http://h2web.local/")
			getCount.Add(1)
			if err != nil || resp.StatusCode != http.StatusOK {
				getFailed.Add(1)
				lateErr.CompareAndSwap(nil, fmt.Errorf("GET: %v %v", resp, err))
			} else {
				resp.Body.Close()
			}
		})
		unary := inLoops(4, stop, func() {
			start := time.Now().UnixNano()
			_, err := client.UnaryCall(metadata.AppendToOutgoingContext(ctx, h2test.DelayKey, "10"), &testpb.SimpleRequest{})
			calls.Add(1)
			// A call in flight on the instance as it dies may fail: gRPC
			// calls are not known to be idempotent.
			if k := killedAt.Load(); err != nil && k != 0 && start > k {
				callFailed.Add(1)
				lateErr.CompareAndSwap(nil, err)
			}
		})
		waitFor(t, 10*time.Second, "load to flow", func() bool { return getCount.Load() > 100 && calls.Load() > 100 })
		hosts[1].Proc.Kill()
		killedAt.Store(time.Now().UnixNano())
		after := calls.Load()
		waitFor(t, 20*time.Second, "300 more calls after the kill", func() bool { return calls.Load() > after+300 })
		close(stop)
		gets.Wait()
		unary.Wait()
		t.Logf("kill under load: %d GETs (%d failed), %d calls (%d started after the kill failed)", getCount.Load(), getFailed.Load(), calls.Load(), callFailed.Load())
		if getFailed.Load() > 0 || callFailed.Load() > 0 {
			t.Errorf("%d GETs and %d calls started after the kill failed; first: %v", getFailed.Load(), callFailed.Load(), lateErr.Load())
		}
	})
}

// A server-first TCP service declared meshlet-protocol=tcp greets the
// app at once: no wait for the app's first bytes.
func TestProtocolTCPServerFirstConnectsWithoutDelay(t *testing.T) {
	needGRPCInstance(t)
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h := startH2Host(t, w, "m1")
	h.register(t, w, "smtp", 2525, map[string]string{"meshlet-protocol": "tcp"})
	h.register(t, w, "smtp-sniffed", 2525, nil)
	for _, s := range []string{"smtp", "smtp-sniffed"} {
		if err := w.WaitPassing(ctx, s, 1); err != nil {
			t.Fatal(err)
		}
	}
	greet := func(service string) time.Duration {
		vip := resolveVIP(t, w, service+".local")
		conn, err := w.App.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 25).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		buf := make([]byte, len("220 m1\r\n"))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "220 m1\r\n" {
			t.Fatalf("%s: greeting %q, %v", service, buf, err)
		}
		return time.Since(start)
	}
	greet("smtp") // the first connection starts meshlet's watch of the service
	greet("smtp-sniffed")
	// Without the hint meshlet waits 300 ms for the app's first bytes;
	// with it the greeting comes at once (a loaded machine may delay one
	// connection, never by the sniff wait).
	fastest := time.Hour
	for i := range 5 {
		hinted, sniffed := greet("smtp"), greet("smtp-sniffed")
		t.Logf("greeting after %v with the hint, %v without", hinted, sniffed)
		fastest = min(fastest, hinted)
		if hinted >= 250*time.Millisecond {
			t.Errorf("connection %d: the greeting of the service declared tcp came after %v", i, hinted)
		}
		if sniffed < 250*time.Millisecond {
			t.Errorf("connection %d: without the hint the greeting came after %v, want the 300 ms sniff wait", i, sniffed)
		}
	}
	if fastest > 50*time.Millisecond {
		t.Errorf("the fastest greeting with the hint came after %v, want at once", fastest)
	}
}

// A WebSocket through the mesh (ws://chat.local/ws) stays up while
// instances are added to and removed from Consul, its own included:
// nothing but the app or the instance ends it. MESHLET_WS_HOLD (default
// 20s) sets how long it is held (make test-websocket-long: minutes).
func TestWebSocketHeldWhileInstancesChange(t *testing.T) {
	hold := 20 * time.Second
	if v := os.Getenv("MESHLET_WS_HOLD"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > time.Hour {
			t.Fatalf("MESHLET_WS_HOLD=%q: want a duration up to 1h", v)
		}
		hold = d
	}
	needGRPCInstance(t)
	w := startWorld(t, meshlab.Options{Service: "seed", Instances: 1})
	ctx, cancel := context.WithTimeout(context.Background(), hold+time.Minute)
	defer cancel()
	var hosts []h2Host
	for i := 1; i <= 4; i++ {
		hosts = append(hosts, startH2Host(t, w, fmt.Sprintf("w%d", i)))
	}
	hosts[0].register(t, w, "chat", 8080, nil)
	hosts[1].register(t, w, "chat", 8080, nil)
	if err := w.WaitPassing(ctx, "chat", 2); err != nil {
		t.Fatal(err)
	}
	vip := resolveVIP(t, w, "chat.local")
	conn, err := w.App.DialContext(ctx, "tcp", netip.AddrPortFrom(vip, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg, err := websocket.NewConfig("ws://chat.local/ws", "http://chat.local/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("WebSocket handshake through meshlet: %v", err)
	}
	var on string
	ws.SetDeadline(time.Now().Add(5 * time.Second))
	if err := websocket.Message.Receive(ws, &on); err != nil {
		t.Fatal(err)
	}
	t.Logf("WebSocket on %s, held for %v", on, hold)

	// The instance set changes every few seconds, meanwhile: one added,
	// the WebSocket's own instance deregistered, others added and removed.
	changes := []func(){
		func() { hosts[2].register(t, w, "chat", 8080, nil) },
		func() {
			if err := w.Consul.Agent().ServiceDeregister(on + "-chat"); err != nil {
				t.Error(err)
			}
		},
		func() { hosts[3].register(t, w, "chat", 8080, nil) },
		func() { w.Consul.Agent().ServiceDeregister("w3-chat") },
	}
	start, next := time.Now(), 0
	for i := 0; time.Since(start) < hold; i++ {
		if due := time.Duration(next+1) * hold / time.Duration(len(changes)+1); next < len(changes) && time.Since(start) >= due {
			changes[next]()
			next++
		}
		msg := fmt.Sprintf("message %d", i)
		ws.SetDeadline(time.Now().Add(5 * time.Second))
		var echo string
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("after %v: sending: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if err := websocket.Message.Receive(ws, &echo); err != nil || echo != msg {
			t.Fatalf("after %v: echo %q, %v; want %q", time.Since(start).Round(time.Millisecond), echo, err, msg)
		}
		time.Sleep(200 * time.Millisecond) // the pace of a chatty client, not a wait for anything
	}
	if next != len(changes) {
		t.Fatalf("only %d of %d changes made", next, len(changes))
	}
}
