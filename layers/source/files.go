package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"
)

// Local sources are regular files and directories. Anything else is refused by its type before
// it is opened: a FIFO blocks in open(2) until a writer comes (ignoring cancellation), a
// device such as /dev/zero reads forever, and opening some devices has effects of its own.

// typeName names a file's type for an error ("a named pipe (FIFO)").
func typeName(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "an irregular file (" + m.Type().String() + ")"
}

// fileTypeError reports p is of the wrong type.
func fileTypeError(p string, m fs.FileMode, expected string) error {
	return fmt.Errorf("%s: %s, expected %s", p, typeName(m), expected)
}

// openRegular opens p (symlinks followed) for reading if it is a regular file.
func openRegular(p string) (*os.File, fs.FileInfo, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fileTypeError(p, st.Mode(), "a regular file")
	}
	return openChecked(p)
}

// openChecked opens p without blocking (O_NONBLOCK: a FIFO swapped in after a check does
// not wait for a writer; O_NOCTTY: a terminal does not become ours) and checks on the open
// descriptor that it is a regular file, then clears O_NONBLOCK.
func openChecked(p string) (*os.File, fs.FileInfo, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fileTypeError(p, st.Mode(), "a regular file")
	}
	return f, st, nil
}

// readDir lists the directory p, refusing anything else without blocking on it.
func readDir(p string) ([]os.DirEntry, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if st, serr := os.Stat(p); serr == nil && !st.IsDir() {
			return nil, fileTypeError(p, st.Mode(), "a directory")
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return f.ReadDir(-1)
}

// openLayout opens the OCI image layout at dir after checking that what go-containerregistry
// will read is regular files: index.json, oci-layout and every blob (symlinks followed).
func openLayout(dir string) (layout.Path, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fileTypeError(dir, st.Mode(), "a directory")
	}
	for _, n := range []string{"index.json", "oci-layout"} {
		p := filepath.Join(dir, n)
		if st, err := os.Stat(p); err == nil && !st.Mode().IsRegular() {
			return "", fileTypeError(p, st.Mode(), "a regular file")
		}
	}
	blobs := filepath.Join(dir, "blobs")
	algs, err := readDir(blobs)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	for _, a := range algs {
		if a.Type().IsRegular() {
			continue // not a blob directory; nothing reads it
		}
		ents, err := readDir(filepath.Join(blobs, a.Name()))
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			p := filepath.Join(blobs, a.Name(), e.Name())
			st, err := os.Stat(p)
			if err != nil {
				return "", err
			}
			if !st.Mode().IsRegular() {
				return "", fileTypeError(p, st.Mode(), "a regular file")
			}
		}
	}
	return layout.FromPath(dir)
}
