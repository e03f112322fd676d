// Package flock takes exclusive flock(2) locks on files, waiting in a way that honours a
// context. flock locks belong to the open file: they exclude other processes and other open
// files in this process alike, and the kernel drops them when the holder dies, so a killed
// writer never wedges anyone.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Lock opens (creating with perm) the file at path and takes an exclusive lock on it, polling
// with a doubling wait (1 ms up to 50 ms) until it is free or ctx ends. onSlow, if not nil, is
// called once when the wait passes a second (to log whom we wait for). The returned unlock
// releases the lock and closes the file; calling it again does nothing.
func Lock(ctx context.Context, path string, perm os.FileMode, onSlow func()) (unlock func() error, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, perm)
	if err != nil {
		return nil, fmt.Errorf("opening lock: %w", err)
	}
	wait, start := time.Millisecond, time.Now()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if onSlow != nil && time.Since(start) > time.Second {
			onSlow()
			onSlow = nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			_ = f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, context.Cause(ctx))
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
	var once sync.Once
	return func() error {
		err := error(nil)
		once.Do(func() {
			err = unix.Flock(int(f.Fd()), unix.LOCK_UN)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		})
		return err
	}, nil
}
