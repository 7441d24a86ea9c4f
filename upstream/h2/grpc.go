package h2

// gRPC over HTTP/2, as far as a proxy must know it: which requests are
// calls, the grpc-timeout a call carries, and the trailers-only answers
// meshlet makes itself (see the gRPC over HTTP/2 protocol document).

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// gRPC status codes that meshlet answers with.
const (
	grpcInternal         = 13
	grpcUnavailable      = 14
	grpcDeadlineExceeded = 4
	grpcUnimplemented    = 12
	grpcPermissionDenied = 7
)

// isGRPC reports whether a request is a gRPC call: its content type is
// application/grpc, alone or with a +format or parameters.
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	const base = "application/grpc"
	if len(ct) < len(base) || !strings.EqualFold(ct[:len(base)], base) {
		return false
	}
	return len(ct) == len(base) || ct[len(base)] == '+' || ct[len(base)] == ';'
}

// grpcTimeout reads a call's grpc-timeout: at most 8 digits and a unit
// (H, M, S, m, u, n). A malformed value is ignored, as servers do.
func grpcTimeout(h http.Header) (time.Duration, bool) {
	v := h.Get("Grpc-Timeout")
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	i := strings.IndexByte("numSMH", v[len(v)-1])
	if i < 0 {
		return 0, false
	}
	unit := [...]time.Duration{time.Nanosecond, time.Microsecond, time.Millisecond, time.Second, time.Minute, time.Hour}[i]
	// 99999999 hours overflows a Duration: such a call has no deadline to
	// speak of.
	if unit > time.Second && n > uint64((1<<63-1)/unit) {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// grpcCodeOf is the gRPC status of an answer meshlet makes with the HTTP
// status status, as gRPC itself maps HTTP statuses, except that a 504 of
// a timeout is the call's deadline.
func grpcCodeOf(status int) int {
	switch status {
	case http.StatusGatewayTimeout:
		return grpcDeadlineExceeded
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	case http.StatusNotImplemented:
		return grpcUnimplemented
	case http.StatusForbidden: // a Consul intention denies the call
		return grpcPermissionDenied
	default:
		return grpcInternal
	}
}

// writeGRPCStatus answers a call with a trailers-only gRPC status: one
// HEADERS frame that ends the stream.
func writeGRPCStatus(w http.ResponseWriter, code int, msg, errCode string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", grpcMessage(msg))
	h.Set("X-Meshlet-Error", errCode)
	w.WriteHeader(http.StatusOK)
}

// grpcMessage percent-encodes msg as grpc-message wants: every byte but
// printable ASCII other than '%'.
func grpcMessage(msg string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
