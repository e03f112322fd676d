package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestOneCorruptImageDoesNotHideTheOthers: an image whose manifest or config blob is corrupt
// or missing is reported by ListAll (and makes List fail), while the healthy images are still
// listed and resolve by digest, prefix and version.
func TestOneCorruptImageDoesNotHideTheOthers(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(t *testing.T, st *store.Store, bad store.Image) string // returns the bad blob
		wantErr error
	}{
		{"manifest bytes changed", func(t *testing.T, st *store.Store, bad store.Image) string {
			storetest.Corrupt(t, st, bad.Digest(), []byte(`{"not":"the manifest"}`))
			return bad.Digest().String()
		}, store.ErrDigestMismatch},
		{"manifest missing", func(t *testing.T, st *store.Store, bad store.Image) string {
			storetest.Corrupt(t, st, bad.Digest(), nil)
			return bad.Digest().String()
		}, store.ErrNotFound},
		{"config bytes changed", func(t *testing.T, st *store.Store, bad store.Image) string {
			storetest.Corrupt(t, st, bad.Manifest.Config.Digest, []byte(strings.Repeat("x", int(bad.Manifest.Config.Size))))
			return bad.Manifest.Config.Digest.String()
		}, store.ErrDigestMismatch},
		{"config missing", func(t *testing.T, st *store.Store, bad store.Image) string {
			storetest.Corrupt(t, st, bad.Manifest.Config.Digest, nil)
			return bad.Manifest.Config.Digest.String()
		}, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			st := storetest.Open(t)
			v1 := storetest.PutVersion(t, st, "v1", 100)
			bad := storetest.PutVersion(t, st, "v2", 200)
			v3 := storetest.PutVersion(t, st, "v3", 300)
			blob := tt.corrupt(t, st, bad)

			imgs, unreadable, err := st.ListAll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 2 || imgs[0].Digest() != v3.Digest() || imgs[1].Digest() != v1.Digest() {
				t.Errorf("ListAll images = %v, want v3, v1", imgs)
			}
			if len(unreadable) != 1 || unreadable[0].Descriptor.Digest != bad.Digest() || !errors.Is(unreadable[0], tt.wantErr) {
				t.Fatalf("ListAll unreadable = %v, want %s wrapping %v", unreadable, bad.Digest(), tt.wantErr)
			}
			msg := unreadable[0].Error()
			for _, want := range []string{bad.Digest().String(), "(v2)", blob, "run `imgctl store verify`"} {
				if !strings.Contains(msg, want) {
					t.Errorf("unreadable image message %q lacks %q", msg, want)
				}
			}
			if _, err := st.List(ctx); err == nil || !strings.Contains(err.Error(), bad.Digest().String()) {
				t.Errorf("List = %v, want an error naming %s", err, bad.Digest())
			}

			for _, ref := range []string{v1.Digest().String(), v1.Digest().Encoded()[:12], "v1", "v3", v3.Digest().Encoded()} {
				img, err := st.Resolve(ctx, ref)
				if err != nil {
					t.Errorf("Resolve(%q): %v", ref, err)
				} else if want := map[bool]string{true: "v1", false: "v3"}[ref == "v1" || strings.Contains(v1.Digest().String(), ref)]; img.Config.Version != want {
					t.Errorf("Resolve(%q) = %s, want %s", ref, img.Config.Version, want)
				}
			}
			for _, ref := range []string{bad.Digest().String(), "v2", bad.Digest().Encoded()[:12]} {
				_, err := st.Resolve(ctx, ref)
				if err == nil || !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), blob) || !strings.Contains(err.Error(), "imgctl store verify") {
					t.Errorf("Resolve(%q) = %v, want an error naming %s and wrapping %v", ref, err, blob, tt.wantErr)
				}
			}
			if _, err := st.Resolve(ctx, "v9"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "1 image in the store cannot be read") {
				t.Errorf("Resolve(v9) = %v, want not found, mentioning the unreadable image", err)
			}
		})
	}
}
