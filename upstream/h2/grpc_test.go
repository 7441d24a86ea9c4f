package h2

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/h2/h2test"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// serveWeb runs a mesh whose service "web" has the given instances, and
// the HTTP/2 front-end for it behind a loopback front.
func serveWeb(t testing.TB, tweak func(*upstream.Config), instances ...*api.ServiceEntry) (*upstreamtest.FakeConsul, *upstreamtest.Front) {
	t.Helper()
	fc := upstreamtest.NewFakeConsul(t)
	fc.SetCatalog(1, "web")
	fc.SetHealth("web", 7, instances...)
	m := upstreamtest.NewMesh(t, fc, tweak)
	s := New(m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	front := upstreamtest.Serve(t, func(ctx context.Context, c net.Conn) {
		s.Serve(ctx, c, nil, m.Target("web", "web.local"))
	})
	return fc, front
}

// grpcInstances starts n gRPC instances and returns them with their
// Consul entries, declared meshlet-protocol=grpc plus meta.
func grpcInstances(t testing.TB, n int, meta ...string) ([]*h2test.Instance, []*api.ServiceEntry) {
	var insts []*h2test.Instance
	var entries []*api.ServiceEntry
	for i := range n {
		name := string(rune('a' + i))
		inst := h2test.Start(t, name)
		insts = append(insts, inst)
		entries = append(entries, upstreamtest.WithMeta(upstreamtest.Instance(t, "web", name, inst.Addr),
			append([]string{"meshlet-protocol", "grpc"}, meta...)...))
	}
	return insts, entries
}

// dialGRPC is the app's one gRPC channel to the front.
func dialGRPC(t testing.TB, front *upstreamtest.Front) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+front.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func TestGRPCUnaryCallsAreBalancedPerCall(t *testing.T) {
	_, entries := grpcInstances(t, 3)
	_, front := serveWeb(t, nil, entries...)
	client := dialGRPC(t, front)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	counts := map[string]int{}
	for i := range 300 {
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		counts[resp.GetHostname()]++
	}
	for _, name := range []string{"a", "b", "c"} {
		if n := counts[name]; n < 80 || n > 120 {
			t.Errorf("300 calls over one channel: %v; want each instance within 100 ± 20%%", counts)
		}
	}
	if front.Accepted.Load() != 1 {
		t.Errorf("the channel made %d connections, want 1", front.Accepted.Load())
	}
}

func TestGRPCStreamingBothWays(t *testing.T) {
	_, entries := grpcInstances(t, 1)
	_, front := serveWeb(t, nil, entries...)
	client := dialGRPC(t, front)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Server streaming: each message comes as it is sent, not at the end.
	params := []*testpb.ResponseParameters{{Size: 100}, {Size: 70000, IntervalUs: 1000000}, {Size: 1, IntervalUs: 300000}}
	var trailer metadata.MD
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params}, grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	first, err := stream.Recv()
	if err != nil || len(first.GetPayload().GetBody()) != 100 {
		t.Fatalf("first message: %v, %v", first, err)
	}
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Errorf("the first message came after %v, with the next 1 s after it: the stream was buffered", d)
	}
	for i, want := range []int{70000, 1} {
		m, err := stream.Recv()
		if err != nil || len(m.GetPayload().GetBody()) != want {
			t.Fatalf("message %d: %d bytes, %v; want %d", i+2, len(m.GetPayload().GetBody()), err, want)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	if got := trailer.Get("x-instance"); len(got) != 1 || got[0] != "a" {
		t.Errorf("trailer x-instance = %v, want the instance's", got)
	}

	// Bidirectional: each answer comes before the next message is sent.
	duplex, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		size := int32(10 + i*20000)
		if err := duplex.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: size}}}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		m, err := duplex.Recv()
		if err != nil || len(m.GetPayload().GetBody()) != int(size) {
			t.Fatalf("answer %d: %d bytes, %v; want %d", i, len(m.GetPayload().GetBody()), err, size)
		}
	}
	if err := duplex.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := duplex.Recv(); err != io.EOF {
		t.Fatalf("end of the duplex stream: %v", err)
	}
	if got := duplex.Trailer().Get("x-instance"); len(got) != 1 || got[0] != "a" {
		t.Errorf("duplex trailer x-instance = %v", got)
	}
}

// The answers meshlet makes itself are gRPC statuses that say why.
func TestGRPCStatusOfMeshletErrors(t *testing.T) {
	live := h2test.Start(t, "a")
	for _, tc := range []struct {
		name     string
		entries  func(t *testing.T) []*api.ServiceEntry
		delayMs  string
		timeout  time.Duration
		want     codes.Code
		inReason string
	}{
		{"no instance", func(t *testing.T) []*api.ServiceEntry { return nil },
			"", time.Second, codes.Unavailable, "no healthy instance"},
		{"instance unreachable", func(t *testing.T) []*api.ServiceEntry {
			return []*api.ServiceEntry{upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "dead", upstreamtest.DeadAddr(t)), "meshlet-protocol", "grpc")}
		}, "", 5 * time.Second, codes.Unavailable, "unreachable"},
		{"service not declared HTTP/2", func(t *testing.T) []*api.ServiceEntry {
			return []*api.ServiceEntry{upstreamtest.Instance(t, "web", "a", live.Addr)}
		}, "", 5 * time.Second, codes.Unimplemented, "meshlet-protocol=grpc"},
		{"grpc-timeout passes", func(t *testing.T) []*api.ServiceEntry {
			return []*api.ServiceEntry{upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", live.Addr), "meshlet-protocol", "grpc")}
		}, "2000", 300 * time.Millisecond, codes.DeadlineExceeded, ""},
		{"service timeout passes", func(t *testing.T) []*api.ServiceEntry {
			return []*api.ServiceEntry{upstreamtest.WithMeta(upstreamtest.Instance(t, "web", "a", live.Addr), "meshlet-protocol", "grpc", "meshlet-timeout", "200ms")}
		}, "2000", 5 * time.Second, codes.DeadlineExceeded, "within its timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, front := serveWeb(t, nil, tc.entries(t)...)
			client := dialGRPC(t, front)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			if tc.delayMs != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, h2test.DelayKey, tc.delayMs)
			}
			var header metadata.MD
			start := time.Now()
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&header))
			st := status.Convert(err)
			if st.Code() != tc.want || !strings.Contains(st.Message(), tc.inReason) {
				t.Fatalf("status %v %q; want %v with %q", st.Code(), st.Message(), tc.want, tc.inReason)
			}
			if tc.inReason != "" && !strings.HasPrefix(st.Message(), "meshlet: ") {
				t.Errorf("message %q does not say meshlet made it", st.Message())
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("the status came after %v", d)
			}
		})
	}
}

// An instance that stops gracefully (GOAWAY, calls in flight finish)
// fails no call: new calls go to the others.
func TestGRPCGracefulStopFailsNoCall(t *testing.T) {
	insts, entries := grpcInstances(t, 3)
	_, front := serveWeb(t, nil, entries...)
	client := dialGRPC(t, front)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var calls, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx := metadata.AppendToOutgoingContext(ctx, h2test.DelayKey, "20")
				_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{})
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	upstreamtest.Eventually(t, "calls to flow", func() bool { return calls.Load() > 50 })
	insts[1].Server.GracefulStop()
	before := calls.Load()
	upstreamtest.Eventually(t, "calls after the stop", func() bool { return calls.Load() > before+200 })
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d failed", calls.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d of %d calls failed; first: %v", failed.Load(), calls.Load(), firstErr.Load())
	}
}

// A call in flight on an instance that dies gets UNAVAILABLE; later calls
// go to the instance left.
func TestGRPCKilledInstance(t *testing.T) {
	insts, entries := grpcInstances(t, 2)
	_, front := serveWeb(t, nil, entries...)
	client := dialGRPC(t, front)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 { // one on each instance, by round robin
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.UnaryCall(metadata.AppendToOutgoingContext(ctx, h2test.DelayKey, "3000"), &testpb.SimpleRequest{})
			errs <- err
		}()
	}
	upstreamtest.Eventually(t, "a call on each instance", func() bool {
		return insts[0].Service.Unary.Load() == 1 && insts[1].Service.Unary.Load() == 1
	})
	insts[0].Server.Stop() // closes its connections at once
	wg.Wait()
	close(errs)
	var unavailable int
	for err := range errs {
		if status.Code(err) == codes.Unavailable {
			unavailable++
		} else if err != nil {
			t.Errorf("call on a killed instance: %v, want UNAVAILABLE", err)
		}
	}
	if unavailable != 1 {
		t.Errorf("%d calls got UNAVAILABLE, want the one on the killed instance", unavailable)
	}
	for i := range 10 {
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		if err != nil || resp.GetHostname() != "b" {
			t.Fatalf("call %d after the kill: %v, %v", i, resp.GetHostname(), err)
		}
	}
}

func TestGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true},
		{"250m", 250 * time.Millisecond, true},
		{"99999999H", 0, false},
		{"3M", 3 * time.Minute, true},
		{"7u", 7 * time.Microsecond, true},
		{"9n", 9, true},
		{"123456789S", 0, false},
		{"S", 0, false},
		{"-1S", 0, false},
		{"10s", 0, false},
		{"", 0, false},
	} {
		h := map[string][]string{"Grpc-Timeout": {tc.in}}
		got, ok := grpcTimeout(h)
		if got != tc.want || ok != tc.ok {
			t.Errorf("grpcTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestGRPCMessageEncoding(t *testing.T) {
	if got := grpcMessage("50% of \"web\"\n→"); got != "50%25 of \"web\"%0A%E2%86%92" {
		t.Errorf("grpcMessage = %q", got)
	}
}
