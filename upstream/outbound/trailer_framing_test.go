package outbound

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream/upstreamtest"
)

// Framing fields in a request's trailer (any spelling) never reach an
// instance: the forwarder drops them, the net/http path passes no trailer.
func TestFramingFieldsInTrailersNeverReachAnInstance(t *testing.T) {
	for _, tc := range []struct{ name, first string }{
		{"forwarder", ""},
		{"net/http", "GET /first HTTP/1.0\r\nHost: web.local\r\nConnection: keep-alive\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ri, addr := startRecordingInstance(t)
			front := oneInstanceMesh(t, addr)
			app := upstreamtest.DialApp(t, front)
			if tc.first != "" {
				app.Send(tc.first)
				app.Read("GET")
			}
			app.Send("POST / HTTP/1.1\r\nHost: web.local\r\nTrailer: Transfer_Encoding\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nTransfer_Encoding: chunked\r\nContent-Length: 7\r\n\r\n")
			resp, body := app.Read("POST")
			time.Sleep(200 * time.Millisecond)
			got := ri.bytes()
			t.Logf("status %d %q\ninstance got:\n%s", resp.StatusCode, body, got)
			if resp.StatusCode != http.StatusOK || body != "ok" {
				t.Errorf("the request got %d %q, want it served", resp.StatusCode, body)
			}
			if strings.Contains(got, "Transfer_Encoding: chunked") || strings.Contains(got, "Content-Length: 7") {
				t.Errorf("a framing field in a trailer reached the instance")
			}
		})
	}
}

// A Forwarded header from the app is dropped on both HTTP paths.
func TestForwardedFromTheAppIsDropped(t *testing.T) {
	ri, addr := startRecordingInstance(t)
	front := oneInstanceMesh(t, addr)
	app := upstreamtest.DialApp(t, front)
	app.Send("GET /a HTTP/1.1\r\nHost: web.local\r\nForwarded: for=1.2.3.4\r\n\r\n")
	app.Read("GET")
	app.Send("GET /b HTTP/1.0\r\nHost: web.local\r\nConnection: keep-alive\r\nForwarded: for=5.6.7.8\r\n\r\n")
	app.Read("GET")
	time.Sleep(100 * time.Millisecond)
	got := ri.bytes()
	t.Logf("%s", got)
	if strings.Contains(got, "for=5.6.7.8") {
		t.Errorf("Forwarded passed on by the net/http path")
	}
	if strings.Contains(got, "for=1.2.3.4") {
		t.Errorf("Forwarded passed on by the forwarder")
	}
}
