package store

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/flock"
)

// lock takes the store's exclusive lock: first the in-process semaphore, then flock(2) on the
// lock file (flock locks belong to the open file, so they exclude other processes and other
// Stores on the same directory alike). The kernel drops the lock when a holder dies, so a
// killed writer never wedges the store. Waiting honours ctx.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for store lock: %w", ctx.Err())
	}
	release := func() { <-s.sem }

	unlockFile, err := flock.Lock(ctx, s.path(lockFile), 0o644, func() {
		s.log.Info("waiting for the store lock held by another process", "store", s.dir)
	})
	if err != nil {
		release()
		return nil, fmt.Errorf("store lock: %w", err)
	}
	return func() {
		_ = unlockFile()
		release()
	}, nil
}

// Holding runs fn while holding the store's lock, after checking that image d is listed in
// index.json. Channel moves run inside it, so garbage collection (which holds the same lock
// while it reads channel heads and deletes) can never delete an image a channel is being
// pointed at.
func (s *Store) Holding(ctx context.Context, d digest.Digest, fn func() error) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	for _, m := range idx.Manifests {
		if m.Digest == d {
			return fn()
		}
	}
	return fmt.Errorf("image %s is no longer in the store (garbage collected?): %w", d, ErrNotFound)
}
