package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
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

// TestCorruptImage: one image with a corrupt manifest or config is reported once by images
// list (which lists the others and then fails) and by inspect of it, and blocks neither
// inspect, promote nor rollback of the others; gc refuses with a hint to store verify.
func TestCorruptImage(t *testing.T) {
	for _, which := range []string{"manifest", "config"} {
		t.Run(which, func(t *testing.T) {
			dir := t.TempDir()
			st, err := store.Open(t.Context(), filepath.Join(dir, "store"), nil)
			if err != nil {
				t.Fatal(err)
			}
			v1 := storetest.PutVersion(t, st, "v1", 100)
			bad := storetest.PutVersion(t, st, "v2", 200)
			v3 := storetest.PutVersion(t, st, "v3", 300)
			for _, v := range []string{"v1", "v3"} {
				if _, stderr, err := run(t, dir, "promote", v, "--to", "nightly"); err != nil {
					t.Fatalf("promote %s: %v\n%s", v, err, stderr)
				}
			}
			blob := bad.Digest()
			if which == "config" {
				blob = bad.Manifest.Config.Digest
			}
			storetest.Corrupt(t, st, blob, []byte("{}"))

			out, _, err := run(t, dir, "images", "list")
			if !strings.Contains(out, "v1") || !strings.Contains(out, "v3") || strings.Contains(out, "v2") {
				t.Errorf("images list printed:\n%s", out)
			}
			if err == nil || strings.Count(err.Error(), "cannot be read") != 1 || !strings.Contains(err.Error(), bad.Digest().String()) || !strings.Contains(err.Error(), blob.String()) ||
				!strings.Contains(err.Error(), "(v2)") || !strings.Contains(err.Error(), "run `imgctl store verify`") {
				t.Errorf("images list error: %v", err)
			}
			out, _, err = run(t, dir, "-o", "json", "images", "list")
			var rows []map[string]string
			if jerr := json.Unmarshal([]byte(out), &rows); jerr != nil || len(rows) != 2 || err == nil {
				t.Errorf("images list -o json: %v, %d rows (%v):\n%s", err, len(rows), jerr, out)
			}

			// layers list without IMAGE: the newest readable image, with a warning naming the corrupt one.
			if out, stderr, err := run(t, dir, "layers", "list"); err != nil || !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, bad.Digest().String()) {
				t.Errorf("layers list: %v\n%s%s", err, out, stderr)
			}
			if out, _, err := run(t, dir, "images", "inspect", "v1"); err != nil || !strings.Contains(out, v1.Digest().String()) {
				t.Errorf("inspect v1: %v\n%s", err, out)
			}
			if _, _, err := run(t, dir, "images", "inspect", bad.Digest().String()); err == nil || !strings.Contains(err.Error(), blob.String()) || !strings.Contains(err.Error(), "imgctl store verify") {
				t.Errorf("inspect the corrupt image: %v", err)
			}
			if out, stderr, err := run(t, dir, "rollback", "nightly"); err != nil || !strings.Contains(out, "v1") {
				t.Errorf("rollback nightly: %v\n%s%s", err, out, stderr)
			}
			if _, stderr, err := run(t, dir, "promote", v3.Digest().String(), "--to", "nightly"); err != nil {
				t.Errorf("promote v3 by digest: %v\n%s", err, stderr)
			}
			if _, stderr, err := run(t, dir, "promote", "v1", "--to", "nightly"); err != nil {
				t.Errorf("promote v1 by version: %v\n%s", err, stderr)
			}
			if which == "manifest" {
				if _, _, err := run(t, dir, "gc", "--dry-run"); err == nil || !strings.Contains(err.Error(), "run `imgctl store verify`") || !strings.Contains(err.Error(), blob.String()) {
					t.Errorf("gc with a corrupt manifest: %v", err)
				}
			} else if out, stderr, err := run(t, dir, "gc", "--dry-run"); err != nil {
				t.Errorf("gc with a corrupt config: %v\n%s%s", err, out, stderr)
			}
		})
	}
}
