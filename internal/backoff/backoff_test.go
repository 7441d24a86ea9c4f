package backoff

import (
	"testing"
	"time"
)

func TestFullJitterStaysUnderItsCeiling(t *testing.T) {
	b := FullJitter(250*time.Millisecond, 30*time.Second)
	for _, tc := range []struct {
		attempt int
		ceiling time.Duration
	}{
		{-1, 250 * time.Millisecond},
		{0, 250 * time.Millisecond},
		{1, 250 * time.Millisecond},
		{2, 500 * time.Millisecond},
		{5, 4 * time.Second},
		{8, 30 * time.Second},
		{63, 30 * time.Second},
		{1000, 30 * time.Second},
	} {
		var top time.Duration
		for range 2000 {
			d := b(tc.attempt)
			if d < 0 || d > tc.ceiling {
				t.Fatalf("attempt %d: waited %v, want within [0, %v]", tc.attempt, d, tc.ceiling)
			}
			top = max(top, d)
		}
		// Jitter spreads over the whole range, not a fixed fraction of it.
		if top < tc.ceiling/2 {
			t.Errorf("attempt %d: longest of 2000 waits %v, want some above half the ceiling %v", tc.attempt, top, tc.ceiling)
		}
	}
	if d := FullJitter(0, 0)(3); d != 0 {
		t.Errorf("zero base and cap: waited %v", d)
	}
}
