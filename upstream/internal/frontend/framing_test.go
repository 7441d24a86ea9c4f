package frontend

import (
	"testing"
)

func TestFramingLike(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"Content-Length", true}, // callers test the real names first
		{"Transfer-Encoding", true},
		{"Content_Length", true},
		{"content_length", true},
		{"Transfer_Encoding", true},
		{"TRANSFER_ENCODING", true},
		{"transfer.encoding", true},
		{"Content.Length", true},
		{"Content~Length", true},
		{"Transfer--Encoding", true},
		{"_Transfer_Encoding_", true},
		{"ContentLength", true},
		{"TransferEncoding", true},
		{"Content-Type", false},
		{"Content-Lengths", false},
		{"X-Content-Length", false},
		{"Content-Length2", false},
		{"Transfer-Encodin", false},
		{"Content-Encoding", false},
		{"TE", false},
		{"", false},
	} {
		if got := FramingLike(tc.name); got != tc.want {
			t.Errorf("FramingLike(%q) = %v, want %v", tc.name, got, tc.want)
		}
		if got := FramingLike([]byte(tc.name)); got != tc.want {
			t.Errorf("FramingLike([]byte(%q)) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
