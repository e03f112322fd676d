// Package backoff computes retry waits: one jittered doubling backoff for every retry loop
// (the node agent's metadata and report clients, imgctl's S3 uploads). Standard library only,
// so the node agent may import it.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay is the wait after the given failed attempt (1 = the first): base·2^(attempt-1), capped
// at max, then jittered to [½, 1½) of that so many clients failing together do not retry in
// lockstep.
func Delay(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d)
}
