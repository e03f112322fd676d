package switchroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
	// A read-only directory: root ignores it and deletes everything; anyone else cannot unlink
	// its file, and DeleteTree must report that and still delete the rest.
	ro := filepath.Join(root, "etc/imgctl")
	if err := os.Chmod(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(ro, 0o755) }) // before TempDir's own cleanup
	n, err := DeleteTree(root)
	ents, rerr := os.ReadDir(root)
	if rerr != nil {
		t.Fatal(rerr)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if os.Geteuid() == 0 {
		if err != nil {
			t.Fatal(err)
		}
		if n != 13 { // 9 directories, 3 files, 1 symlink
			t.Errorf("deleted %d entries, want 13", n)
		}
		if len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), filepath.Join(ro, "modules")) {
		t.Errorf("DeleteTree err = %v, want one naming %s", err, filepath.Join(ro, "modules"))
	}
	if n != 10 { // all but etc/imgctl/modules, etc/imgctl and etc
		t.Errorf("deleted %d entries, want 10", n)
	}
	if len(left) != 1 || left[0] != "etc" {
		t.Errorf("left behind: %v, want [etc]", left)
	}
}

// TestFreeInitramfsRefusesDisk checks the guard on filesystems whose type is known: /proc is a
// procfs and /sys a sysfs on every Linux, so the guard must refuse both; and freeInitramfs must
// then delete nothing, while on a ramfs or tmpfs it deletes the tree.
func TestFreeInitramfsRefusesDisk(t *testing.T) {
	for _, dir := range []string{"/proc", "/sys"} {
		err := checkInitramfs(dir)
		if err == nil {
			t.Errorf("checkInitramfs(%s) = nil: the guard accepts a filesystem that is not ramfs or tmpfs", dir)
		} else if !strings.Contains(err.Error(), dir+" is not an initramfs") {
			t.Errorf("checkInitramfs(%s) = %q: does not say what it refused", dir, err)
		}
	}

	for _, tc := range []struct {
		name   string
		magic  int64
		delete bool
	}{
		{"ext4", unix.EXT4_SUPER_MAGIC, false},
		{"xfs", unix.XFS_SUPER_MAGIC, false},
		{"squashfs", unix.SQUASHFS_MAGIC, false},
		{"ramfs", unix.RAMFS_MAGIC, true},
		{"tmpfs", unix.TMPFS_MAGIC, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.WriteFile(filepath.Join(root, "init"), []byte("x"), 0o755); err != nil {
				t.Fatal(err)
			}
			old := statfs
			t.Cleanup(func() { statfs = old })
			statfs = func(path string, st *unix.Statfs_t) error {
				if path != root {
					t.Errorf("statfs(%q), want %q", path, root)
				}
				st.Type = tc.magic
				return nil
			}
			n, err := freeInitramfs(root)
			_, statErr := os.Stat(filepath.Join(root, "init"))
			if tc.delete {
				if err != nil || n != 1 || statErr == nil {
					t.Errorf("freeInitramfs on %s = %d, %v (init left: %v): want it deleted", tc.name, n, err, statErr == nil)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "not an initramfs") {
				t.Errorf("freeInitramfs on %s: err = %v, want a refusal", tc.name, err)
			}
			if n != 0 || statErr != nil {
				t.Errorf("freeInitramfs on %s deleted %d entries (stat init: %v): want none", tc.name, n, statErr)
			}
		})
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
