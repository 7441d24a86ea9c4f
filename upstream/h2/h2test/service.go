// Package h2test is the gRPC instance that the tests of the HTTP/2
// front-end, the integration tests and the benchmarks run: gRPC's own
// interop TestService, answering with the instance's name. Tests and
// test programs only.
package h2test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// DelayKey is the metadata key of a unary call that asks the instance to
// answer that many milliseconds late (at most a minute).
const DelayKey = "x-delay-ms"

// Service is the TestService of one instance:
//   - UnaryCall answers with Hostname set to the instance's name, after
//     the delay the call's DelayKey metadata asks for;
//   - StreamingOutputCall sends one message per ResponseParameters, each
//     of its Size, IntervalUs after the one before;
//   - FullDuplexCall answers each message at once with a message of the
//     size its first ResponseParameters asks, until the client ends.
type Service struct {
	testpb.UnimplementedTestServiceServer
	Name string
	// Unary counts the unary calls in progress.
	Unary atomic.Int64
}

// Register adds the service of an instance called name to s.
func Register(s *grpc.Server, name string) *Service {
	svc := &Service{Name: name}
	testpb.RegisterTestServiceServer(s, svc)
	return svc
}

func (s *Service) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (s *Service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.Unary.Add(1)
	defer s.Unary.Add(-1)
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(DelayKey); len(v) > 0 {
		ms, err := strconv.Atoi(v[0])
		if err != nil || ms < 0 || ms > 60000 {
			return nil, status.Errorf(codes.InvalidArgument, "%s %q: want 0..60000", DelayKey, v[0])
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &testpb.SimpleResponse{Hostname: s.Name, Payload: payload(req.GetResponseSize())}, nil
}

func (s *Service) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for _, p := range req.GetResponseParameters() {
		select {
		case <-time.After(time.Duration(p.GetIntervalUs()) * time.Microsecond):
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: payload(p.GetSize())}); err != nil {
			return err
		}
	}
	stream.SetTrailer(metadata.Pairs("x-instance", s.Name))
	return nil
}

func (s *Service) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	stream.SetTrailer(metadata.Pairs("x-instance", s.Name))
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var size int32
		if ps := req.GetResponseParameters(); len(ps) > 0 {
			size = ps[0].GetSize()
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: payload(size)}); err != nil {
			return err
		}
	}
}

// payload is n bytes of 'x' (at most 16 MiB).
func payload(n int32) *testpb.Payload {
	n = max(0, min(n, 16<<20))
	b := make([]byte, n)
	for i := range b {
		b[i] = 'x'
	}
	return &testpb.Payload{Body: b}
}

// Instance is a gRPC instance on a loopback port, for unit tests.
type Instance struct {
	Addr    string
	Server  *grpc.Server
	Service *Service
}

// Start serves an instance called name on a loopback port until the test
// ends (or its Server is stopped).
func Start(t testing.TB, name string) *Instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := grpc.NewServer()
	svc := Register(s, name)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return &Instance{Addr: ln.Addr().String(), Server: s, Service: svc}
}
