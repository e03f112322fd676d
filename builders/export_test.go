package builders

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
)

// TestExportArtifactsNeverSharesStoreInodes: --output files are the user's to overwrite, so
// none may be the store's blob file (a hard link would let a write corrupt the store).
func TestExportArtifactsNeverSharesStoreInodes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var artifacts []manifest.Artifact
	for _, a := range []struct{ name, mediaType, content string }{
		{"rootfs.tar", manifest.RootfsMediaType, "rootfs content"},
		{"vmlinuz", manifest.KernelMediaType, "kernel content"},
		{"initrd.img", manifest.InitrdMediaType, "initrd content"},
		{"rootfs.squashfs", manifest.SquashfsMediaType, "squashfs content"},
	} {
		d, n, err := st.WriteBlob(ctx, bytes.NewReader([]byte(a.content)), -1, "")
		if err != nil {
			t.Fatal(err)
		}
		artifacts = append(artifacts, manifest.Artifact{Name: a.name, MediaType: a.mediaType, Digest: d, Size: n})
	}
	out := filepath.Join(dir, "out")
	if _, err := exportArtifacts(ctx, st, out, artifacts); err != nil {
		t.Fatal(err)
	}
	for _, a := range artifacts {
		t.Run(a.Name, func(t *testing.T) {
			p := filepath.Join(out, a.Name)
			blob, err := st.BlobPath(a.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if ino(t, p) == ino(t, blob) {
				t.Fatalf("%s shares inode %d with the store's blob %s", p, ino(t, p), blob)
			}
			if got, err := os.ReadFile(p); err != nil || int64(len(got)) != a.Size {
				t.Fatalf("%s: %d bytes (%v), want %d", p, len(got), err, a.Size)
			}
			// What a user may do with an output file: overwrite it in place.
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("overwritten by the user"), 0o644); err != nil {
				t.Fatal(err)
			}
			probs, err := st.Verify(ctx)
			if err != nil || len(probs) != 0 {
				t.Fatalf("after writing to %s, store verify: %v %v", p, probs, err)
			}
		})
	}
}

func ino(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestExportArtifactsReturnsFiles: the files written are returned (build.Result.Files), a
// sparse disk under its expanded name, so a front end (the Packer plugin) can list them.
func TestExportArtifactsReturnsFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, n, err := st.WriteBlob(ctx, bytes.NewReader([]byte("kernel content")), -1, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	files, err := exportArtifacts(ctx, st, out, []manifest.Artifact{{Name: "vmlinuz", MediaType: manifest.KernelMediaType, Digest: d, Size: n}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(out, "vmlinuz")}; !slices.Equal(files, want) {
		t.Fatalf("files = %q, want %q", files, want)
	}
}
