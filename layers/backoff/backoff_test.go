package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	const base, max = 200 * time.Millisecond, 20 * time.Second
	for _, c := range []struct {
		attempt int
		want    time.Duration // before jitter
	}{{1, 200 * time.Millisecond}, {2, 400 * time.Millisecond}, {7, 12800 * time.Millisecond}, {8, max}, {1000, max}} {
		for range 50 {
			if d := Delay(base, max, c.attempt); d < c.want/2 || d >= c.want*3/2 {
				t.Fatalf("attempt %d: %v outside [%v, %v)", c.attempt, d, c.want/2, c.want*3/2)
			}
		}
	}
	if d := Delay(0, max, 3); d != 0 {
		t.Errorf("zero base: %v", d)
	}
}
