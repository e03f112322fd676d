package flock

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLockExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				unlock, err := Lock(context.Background(), p, 0o644, nil)
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				if n > maxInside.Load() {
					maxInside.Store(n)
				}
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				if err := unlock(); err != nil {
					t.Error(err)
				}
				if err := unlock(); err != nil { // idempotent
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders at once", maxInside.Load())
	}
}

func TestLockHonoursContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := Lock(context.Background(), p, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()

	// A deadline ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Lock(ctx, p, 0o644, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v after %v, want the deadline", err, time.Since(start))
	}

	// onSlow is called once the wait passes a second; it cancels the wait here, so the test
	// does not race a deadline against the poll on a loaded machine (CI once saw a 1.2 s
	// deadline come first).
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	slow := 0
	start = time.Now()
	_, err = Lock(ctx, p, 0o644, func() { slow++; cancel() })
	if !errors.Is(err, context.Canceled) || slow != 1 {
		t.Fatalf("err = %v, onSlow called %d times after %v; want it called once and the wait canceled", err, slow, time.Since(start))
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("onSlow called after %v, before a second of waiting", d)
	}
	if _, err := Lock(context.Background(), filepath.Join(t.TempDir(), "no/such/dir/x.lock"), 0o644, nil); err == nil {
		t.Error("lock in a missing directory succeeded")
	}
}
