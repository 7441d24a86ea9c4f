package h1

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// connectionHead is a request head of about maxHeadSize, with as many
// fields as a head may have, whose Connection field names tokens and
// whose other fields are all named field.
func connectionHead(tokens []string, field string) []byte {
	var b strings.Builder
	b.WriteString("GET / HTTP/1.1\r\nHost: a\r\n")
	if len(tokens) > 0 {
		b.WriteString("Connection: " + strings.Join(tokens, ", ") + "\r\n")
	}
	line := field + ": " + strings.Repeat("v", maxHeadSize/maxFields-len(field)-8) + "\r\n"
	for range maxFields - 2 {
		b.WriteString(line)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

func TestConnectionTokensAreCapped(t *testing.T) {
	many := func(n int) []string {
		toks := make([]string, n)
		for i := range toks {
			toks[i] = fmt.Sprintf("x-%d", i)
		}
		return toks
	}
	var h head
	err := parseRequestHead([]byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: "+strings.Join(many(maxConnTokens+1), ",")+"\r\n\r\n"), &h)
	var he *headError
	if !errors.As(err, &he) || he.status != 400 || !strings.Contains(err.Error(), "tokens in Connection") {
		t.Errorf("%d Connection tokens: %v, want a 400 naming them", maxConnTokens+1, err)
	}
	// At the cap, every field a token names is still dropped, in any case.
	toks := many(maxConnTokens - 1)
	raw := "GET / HTTP/1.1\r\nHost: a\r\nConnection: " + strings.Join(toks, ",") + ", X-Secret\r\n" +
		"x-secret: 1\r\nX-40: 2\r\nX-Keep: 3\r\n\r\n"
	if err := parseRequestHead([]byte(raw), &h); err != nil {
		t.Fatalf("%d Connection tokens: %v", maxConnTokens, err)
	}
	for _, f := range h.fields {
		hop := f.kind == fieldHop || f.kind == fieldConnection
		if want := string(f.name) != "X-Keep" && string(f.name) != "Host"; hop != want {
			t.Errorf("field %s: hop-by-hop %v, want %v", f.name, hop, want)
		}
	}
}

// TestConnectionTokensCostLinearTime: a head of tokens × fields that all
// have to be compared costs about what any head of its size costs (it was
// tokens × fields: 0.9 s of CPU per request).
func TestConnectionTokensCostLinearTime(t *testing.T) {
	// 64 one-letter tokens, and 16k fields of one letter none of them names.
	var toks []string
	for _, c := range "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|" {
		toks = append(toks, string(c))
	}
	for len(toks) < maxConnTokens {
		toks = append(toks, "q"+toks[len(toks)-1])
	}
	// The review's: 13,000 tokens and 9,000 fields, refused.
	review := []byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: " + strings.Repeat("a,", 13000) + "\r\n" +
		strings.Repeat("b:\r\n", 9000) + "\r\n")
	fastest := func(raw []byte, refused bool) time.Duration {
		var h head
		best := time.Hour
		for range 5 {
			start := time.Now()
			if err := parseRequestHead(raw, &h); (err != nil) != refused {
				t.Fatalf("%d-byte head: %v, want refused %v", len(raw), err, refused)
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	plainTime := fastest(connectionHead(nil, "~"), false)
	for _, tc := range []struct {
		name    string
		raw     []byte
		refused bool
	}{
		{"64 tokens, none naming a field", connectionHead(toks, "~"), false},
		{"13,000 tokens", review, true},
	} {
		d := fastest(tc.raw, tc.refused)
		t.Logf("%s: %d-byte head in %v, %v without Connection", tc.name, len(tc.raw), d, plainTime)
		if d > 10*plainTime+5*time.Millisecond {
			t.Errorf("%s: a %d-byte head cost %v, against %v without Connection", tc.name, len(tc.raw), d, plainTime)
		}
	}
}
