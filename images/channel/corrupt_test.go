package channel

import (
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestMovesDespiteAnUnrelatedCorruptImage: one image whose manifest or config blob is corrupt
// must not block promoting or rolling back to the other images, by digest, prefix, version or
// channel name (an emergency rollback above all); moving to the corrupt one fails, naming it.
func TestMovesDespiteAnUnrelatedCorruptImage(t *testing.T) {
	for _, which := range []string{"manifest", "config"} {
		t.Run(which, func(t *testing.T) {
			ctx := t.Context()
			st, l, imgs := newEnv(t, "v1", "v2", "v3", "bad")
			for _, v := range []string{"v1", "v2", "v3"} {
				if _, err := l.Promote(ctx, st, Promotion{Image: v, To: "nightly"}); err != nil {
					t.Fatal(err)
				}
			}
			bad := imgs["bad"]
			blob := bad.Digest()
			if which == "config" {
				blob = bad.Manifest.Config.Digest
			}
			storetest.Corrupt(t, st, blob, []byte(`{"corrupt":true}`))

			// Emergency rollback: v3 → v2, then to v1 by version.
			if e, err := l.Rollback(ctx, st, Rollback{Channel: "nightly", Reason: "v3 is broken"}); err != nil || e.To != imgs["v2"].Digest() {
				t.Fatalf("rollback: %+v, %v", e, err)
			}
			if e, err := l.Rollback(ctx, st, Rollback{Channel: "nightly", To: "v1"}); err != nil || e.To != imgs["v1"].Digest() {
				t.Fatalf("rollback to v1: %+v, %v", e, err)
			}
			for _, p := range []Promotion{
				{Image: imgs["v3"].Digest().String(), To: "nightly"},
				{Image: imgs["v2"].Digest().Encoded()[:12], To: "nightly"},
				{Image: "nightly", To: "staging"},
			} {
				if _, err := l.Promote(ctx, st, p); err != nil {
					t.Errorf("promote %s to %s: %v", p.Image, p.To, err)
				}
			}
			states, err := l.List(ctx, st)
			if err != nil || len(states) != 3 || states[0].Version != "v2" || !states[0].InStore || states[1].Version != "v2" {
				t.Errorf("channel list: %+v, %v", states, err)
			}
			for _, ref := range []string{"bad", bad.Digest().String()} {
				_, err := l.Promote(ctx, st, Promotion{Image: ref, To: "nightly"})
				if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), blob.String()) || !strings.Contains(err.Error(), "imgctl store verify") {
					t.Errorf("promote the corrupt image as %q: %v", ref, err)
				}
			}
		})
	}
}
