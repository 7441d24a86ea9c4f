package registration

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/internal/consulerr"
)

func TestRetryMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"missing permission", fmt.Errorf("registering app-1 in consul: %w", consulerr.Explain(api.StatusError{Code: 403,
			Body: `Permission denied: token with AccessorID 'a1' lacks permission 'service:write' on "app"`})),
			"consul's ACLs refuse the registration (err says what to fix); will retry"},
		{"unknown token", consulerr.Explain(api.StatusError{Code: 403, Body: "ACL not found"}),
			"consul's ACLs refuse the registration (err says what to fix); will retry"},
		{"no leader", api.StatusError{Code: 500, Body: "No cluster leader"}, "cannot reach consul; will retry"},
		{"refused", errors.New("dial tcp 127.0.0.1:8500: connect: connection refused"), "cannot reach consul; will retry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := retryMessage(tc.err); got != tc.want {
				t.Errorf("retryMessage(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}
