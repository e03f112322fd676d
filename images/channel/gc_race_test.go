package channel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/store"
)

// TestPromoteRacingGC promotes images while garbage collection (roots read under the store lock,
// any age) deletes every image no channel points to. Whatever the interleaving, a channel never
// ends up pointing to a deleted image: either the promotion wins and gc keeps the image, or gc
// wins and the promotion fails with ErrNotFound.
func TestPromoteRacingGC(t *testing.T) {
	ctx := context.Background()
	for i := range 30 {
		v := fmt.Sprintf("1.0.%d", i)
		st, l, imgs := newEnv(t, v)
		roots := func() ([]digest.Digest, error) { return l.GCRoots(ctx, 0) }
		var wg sync.WaitGroup
		var promoteErr, gcErr error
		wg.Go(func() {
			_, promoteErr = l.Promote(ctx, st, Promotion{Image: string(imgs[v].Digest()), To: "nightly"})
		})
		wg.Go(func() {
			_, gcErr = st.GC(ctx, store.GCOptions{RootsFunc: roots})
		})
		wg.Wait()
		if gcErr != nil {
			t.Fatal(gcErr)
		}
		h, err := l.History(ctx, "nightly")
		if err != nil {
			t.Fatal(err)
		}
		_, resolveErr := st.Resolve(ctx, string(imgs[v].Digest()))
		switch {
		case promoteErr == nil:
			if h.Head() != imgs[v].Digest() || resolveErr != nil {
				t.Fatalf("iteration %d: promoted, but head %s, image in store: %v", i, h.Head(), resolveErr)
			}
		case errors.Is(promoteErr, store.ErrNotFound):
			if h.Head() != "" {
				t.Fatalf("iteration %d: promotion failed (%v) but the channel moved to %s", i, promoteErr, h.Head())
			}
		default:
			t.Fatalf("iteration %d: promote: %v", i, promoteErr)
		}
		if problems, err := st.Verify(ctx); err != nil || len(problems) > 0 {
			t.Fatalf("iteration %d: store verify: %v %v", i, err, problems)
		}
	}
}
