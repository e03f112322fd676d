package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func TestAddFileAndBlobPath(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.TempDir("work-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "disk.raw")
	data := []byte("a disk image")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	d, n, err := s.AddFile(ctx, p)
	sum := sha256.Sum256(data)
	if err != nil || n != int64(len(data)) || d.Encoded() != hex.EncodeToString(sum[:]) {
		t.Fatalf("AddFile = %s, %d, %v", d, n, err)
	}
	bp, err := s.BlobPath(d)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(bp); string(got) != string(data) {
		t.Errorf("blob content %q", got)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) != 0 {
		t.Errorf("verify: %v %v", problems, err)
	}
	if _, err := s.BlobPath(digest.Digest("sha256:" + hex.EncodeToString(make([]byte, 32)))); err == nil {
		t.Error("BlobPath of a missing blob succeeded")
	}
}
