// Package backoff holds the one retry backoff meshlet uses towards Consul.
package backoff

import (
	"math/rand/v2"
	"time"
)

// FullJitter returns a backoff that waits a uniformly random time between
// zero and base·2^(attempt-1), capped at max, so that many sidecars that lost
// Consul at the same moment do not come back in lockstep. Attempts count
// from 1; smaller ones count as 1.
func FullJitter(base, max time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		ceiling := max
		if attempt < 1 {
			attempt = 1
		}
		// Shifting past 62 bits would overflow; the cap is reached long before.
		if attempt <= 62 {
			if d := base << (attempt - 1); d > 0 && d < max {
				ceiling = d
			}
		}
		if ceiling <= 0 {
			return 0
		}
		return rand.N(ceiling + 1)
	}
}
