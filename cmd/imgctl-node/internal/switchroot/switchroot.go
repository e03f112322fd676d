// Package switchroot moves the initrd's API mounts into the real root, frees the initrd
// (ramfs) and makes the real root the process's / before exec'ing its init.
package switchroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Options of Switch.
type Options struct {
	// NewRoot is the mounted real root (e.g. /run/imgctl/root).
	NewRoot string
	// Staging is an empty directory on the initrd's rootfs where NewRoot is moved first, so
	// that mounts above NewRoot (it may live under /run) can then be moved into it.
	Staging string
	// Move lists mount points moved into the new root, e.g. /dev /proc /sys /run.
	Move []string
}

// Switch returns how many initrd files and directories it deleted.
//
// Switch moves o.NewRoot to o.Staging, moves o.Move into it, deletes everything on the
// initrd's rootfs, and makes the staged root the process's root and working directory.
// On return the caller is in the new root and should exec the init.
func Switch(o Options) (freed int, err error) {
	if err := os.MkdirAll(o.Staging, 0o755); err != nil {
		return freed, fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(o.NewRoot, o.Staging, "", unix.MS_MOVE, ""); err != nil {
		return freed, fmt.Errorf("switch root: move %s to %s: %w", o.NewRoot, o.Staging, err)
	}
	for _, m := range o.Move {
		dst := filepath.Join(o.Staging, m)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return freed, fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			return freed, fmt.Errorf("switch root: move %s to %s: %w", m, dst, err)
		}
	}
	if err := os.Chdir(o.Staging); err != nil {
		return freed, fmt.Errorf("switch root: %w", err)
	}
	if freed, err = freeInitramfs("/"); err != nil {
		return freed, fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return freed, fmt.Errorf("switch root: move %s to /: %w", o.Staging, err)
	}
	if err := unix.Chroot("."); err != nil {
		return freed, fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return freed, fmt.Errorf("switch root: chdir /: %w", err)
	}
	return freed, nil
}

// freeInitramfs deletes the initrd's files, refusing to touch anything that is not a ramfs
// or tmpfs: this runs only on the initramfs, never on a real disk.
func freeInitramfs(root string) (int, error) {
	if err := checkInitramfs(root); err != nil {
		return 0, err
	}
	return DeleteTree(root)
}

// statfs is unix.Statfs; tests replace it to present a directory as another filesystem.
var statfs = unix.Statfs

func checkInitramfs(root string) error {
	var sfs unix.Statfs_t
	if err := statfs(root, &sfs); err != nil {
		return fmt.Errorf("statfs %s: %w", root, err)
	}
	if sfs.Type != unix.RAMFS_MAGIC && sfs.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s is not an initramfs (filesystem magic %#x): not deleting it", root, sfs.Type)
	}
	return nil
}

// DeleteTree deletes the contents of dir that live on dir's filesystem, leaving dir itself
// and anything under a mount point on another filesystem alone. It keeps going on errors,
// returns them joined, and counts what it deleted.
func DeleteTree(dir string) (int, error) {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return 0, fmt.Errorf("delete %s: %w", dir, err)
	}
	n := 0
	err := deleteContents(dir, st.Dev, &n)
	return n, err
}

func deleteContents(dir string, dev uint64, n *int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("delete %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", p, err))
			continue
		}
		if st.Dev != dev {
			continue // a mount point (the staged new root)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := deleteContents(p, dev, n); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := unix.Rmdir(p); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", p, err))
			} else {
				*n++
			}
			continue
		}
		if err := unix.Unlink(p); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", p, err))
		} else {
			*n++
		}
	}
	return errors.Join(errs...)
}

// FindInit returns the first candidate that is an executable file (after following symlinks
// inside the current root).
func FindInit(candidates ...string) (string, error) {
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("no init in the new root: tried %v", candidates)
}
