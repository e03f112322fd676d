package switchroot

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDeleteTree(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"etc/imgctl", "lib/modules/x/kernel/fs", "dev", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"init", "etc/imgctl/modules", "lib/modules/x/kernel/fs/a.ko"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/nonexistent", filepath.Join(root, "lib/dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "etc/imgctl"), 0o555); err != nil { // root ignores it
		t.Fatal(err)
	}
	n, err := DeleteTree(root)
	if os.Geteuid() != 0 {
		return // the read-only directory keeps its contents
	}
	if err != nil {
		t.Fatal(err)
	}
	if n != 13 { // 9 directories, 3 files, 1 symlink
		t.Errorf("deleted %d entries, want 13", n)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

func TestFreeInitramfsRefusesDisk(t *testing.T) {
	// The working directory of a test is on a real filesystem, never a ramfs... unless the
	// whole machine runs from tmpfs, in which case there is nothing to check.
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkInitramfs(dir); err == nil {
		t.Skip("working directory is on ramfs/tmpfs")
	}
}

func TestFindInit(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "systemd")
	if err := os.WriteFile(exe, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "noexec"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("systemd", filepath.Join(dir, "init")); err != nil {
		t.Fatal(err)
	}
	got, err := FindInit(filepath.Join(dir, "missing"), filepath.Join(dir, "noexec"), filepath.Join(dir, "init"), exe)
	if err != nil || got != filepath.Join(dir, "init") {
		t.Errorf("FindInit = %q, %v", got, err)
	}
	if _, err := FindInit(filepath.Join(dir, "missing")); err == nil {
		t.Error("FindInit(missing) succeeded")
	}
}
