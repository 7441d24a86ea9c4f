package h2

import (
	"context"
	"log/slog"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshlet/meshlet/upstream"
	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// BenchmarkGRPCUnary is one unary gRPC call through the HTTP/2 front-end
// (h2c in, h2c out, one instance), and the same call made directly.
func BenchmarkGRPCUnary(b *testing.B) {
	insts, entries := grpcInstances(b, 1)
	_, front := serveWeb(b, func(cfg *upstream.Config) { cfg.Logger = slog.New(slog.DiscardHandler) }, entries...)
	for _, bc := range []struct {
		name string
		addr string
	}{{"proxied", front.Addr}, {"direct", insts[0].Addr}} {
		b.Run(bc.name, func(b *testing.B) {
			client := dialGRPC(b, &upstreamtest.Front{Addr: bc.addr})
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
