// Package localfile opens local files that are read as build inputs (sources, file://
// mirrors, the node agent) so that only regular files and directories are read. Anything else
// is refused by its type before it is opened: a FIFO blocks in open(2) until a writer comes
// (ignoring cancellation), a device such as /dev/zero reads forever, and opening some devices
// has effects of its own.
package localfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// TypeName names a file's type for an error ("a named pipe (FIFO)").
func TypeName(m fs.FileMode) string {
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

// TypeError reports that p is of the wrong type: "P: a named pipe (FIFO), expected EXPECTED".
func TypeError(p string, m fs.FileMode, expected string) error {
	return fmt.Errorf("%s: %s, expected %s", p, TypeName(m), expected)
}

// Open opens p (symlinks followed) for reading if it is a regular file; anything else is
// refused without being opened.
func Open(p string) (*os.File, fs.FileInfo, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, TypeError(p, st.Mode(), "a regular file")
	}
	return OpenChecked(p)
}

// OpenChecked opens p without blocking (O_NONBLOCK: a FIFO swapped in after a check does not
// wait for a writer; O_NOCTTY: a terminal does not become ours), checks on the open descriptor
// that it is a regular file, then clears O_NONBLOCK.
func OpenChecked(p string) (*os.File, fs.FileInfo, error) {
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
		return nil, nil, TypeError(p, st.Mode(), "a regular file")
	}
	return f, st, nil
}

// ReadDir lists the directory p (symlinks followed), refusing anything else without blocking
// on it (O_DIRECTORY|O_NONBLOCK).
func ReadDir(p string) ([]os.DirEntry, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if st, serr := os.Stat(p); serr == nil && !st.IsDir() {
			return nil, TypeError(p, st.Mode(), "a directory")
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	return f.ReadDir(-1)
}

// ReadFile reads the regular file p (symlinks followed) whole, refusing any other type without
// blocking on it and any file larger than limit bytes: for the small files a user names on the
// command line (spec, lock, keys, keyring) that must never hang on a FIFO or read a device.
func ReadFile(p string, limit int64) ([]byte, error) {
	f, st, err := Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d this file may have", p, st.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: grew past the %d bytes this file may have while it was read", p, limit)
	}
	return data, nil
}
