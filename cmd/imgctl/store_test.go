package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imgctl/imgctl/images/store"
)

// TestBuildOutputIsACopy: writing to the files of build --output must leave the store intact.
func TestBuildOutputIsACopy(t *testing.T) {
	dir := t.TempDir()
	content := filepath.Join(dir, "content")
	os.MkdirAll(filepath.Join(content, "etc"), 0o755)
	os.WriteFile(filepath.Join(content, "etc/motd"), []byte("hi\n"), 0o644)
	specPath := writeSpec(t, dir, "file://"+content+"/")
	out := filepath.Join(dir, "out")
	if _, stderr, err := run(t, dir, "build", "-f", specPath, "--lock", filepath.Join(dir, "imgctl.lock"), "--output", out); err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	storeInodes := map[uint64]string{}
	blobs, _ := filepath.Glob(filepath.Join(dir, "store", "blobs", "sha256", "*"))
	for _, b := range blobs {
		storeInodes[inode(t, b)] = b
	}
	files, _ := filepath.Glob(filepath.Join(out, "*"))
	if len(files) == 0 || len(blobs) == 0 {
		t.Fatalf("output files %v, blobs %v", files, blobs)
	}
	for _, f := range files {
		if b, ok := storeInodes[inode(t, f)]; ok {
			t.Errorf("%s is the store's blob %s (same inode)", f, b)
		}
		os.Chmod(f, 0o644)
		if err := os.WriteFile(f, []byte("the user's own data\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if stdout, _, err := run(t, dir, "store", "verify"); err != nil || !strings.Contains(stdout, ": ok") {
		t.Errorf("store verify after writing to %v: %v\n%s", files, err, stdout)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestLostIndex: with index.json gone, store verify and gc fail and name it, gc deletes
// nothing, and no command recreates an empty index.json over the blobs.
func TestLostIndex(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.WriteBlob(t.Context(), strings.NewReader("a blob"), -1, ""); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(dir, "store", "index.json")
	if err := os.Remove(index); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"store", "verify"}, {"gc", "--dry-run"}, {"gc", "--older-than", "0"}, {"images", "list"}} {
		_, _, err := run(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), index+" is missing but") || !strings.Contains(err.Error(), "holds 1 blobs") {
			t.Errorf("%v: %v", args, err)
		}
		if _, err := os.Stat(index); err == nil {
			t.Fatalf("%v recreated %s", args, index)
		}
	}
	blobs, _ := filepath.Glob(filepath.Join(dir, "store", "blobs", "sha256", "*"))
	if len(blobs) != 1 {
		t.Errorf("blobs left: %v", blobs)
	}
}
