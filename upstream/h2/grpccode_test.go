package h2

import (
	"net/http"
	"testing"
)

// The gRPC status of each answer meshlet makes, as a gRPC client reads
// it: UNAVAILABLE invites its retry policy, the others do not.
func TestGRPCCodeOf(t *testing.T) {
	for _, tc := range []struct {
		status, want int
	}{
		{http.StatusServiceUnavailable, grpcUnavailable}, // no healthy instance
		{http.StatusBadGateway, grpcUnavailable},         // the instance failed
		{http.StatusGatewayTimeout, grpcDeadlineExceeded},
		{http.StatusNotImplemented, grpcUnimplemented}, // gRPC to a service not declared HTTP/2
		{http.StatusForbidden, grpcPermissionDenied},   // a Consul intention denies the caller
		{http.StatusBadRequest, grpcInternal},
	} {
		if got := grpcCodeOf(tc.status); got != tc.want {
			t.Errorf("grpcCodeOf(%d) = %d, want %d", tc.status, got, tc.want)
		}
	}
}
