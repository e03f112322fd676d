package localfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within runs f and fails the test if it has not returned after 5s (a blocking open).
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still blocks after 5s", what)
		return nil
	}
}

func TestRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "p")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", link); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "r")
	if err := os.WriteFile(regular, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		run  func() error
		want string
	}{
		// OpenChecked has no stat before the open: a FIFO swapped in after a check.
		{"OpenChecked(FIFO)", func() error { _, _, err := OpenChecked(fifo); return err }, fifo + ": a named pipe (FIFO), expected a regular file"},
		{"Open(FIFO)", func() error { _, _, err := Open(fifo); return err }, fifo + ": a named pipe (FIFO), expected a regular file"},
		{"Open(symlink to /dev/zero)", func() error { _, _, err := Open(link); return err }, link + ": a character device, expected a regular file"},
		{"OpenChecked(/dev/null)", func() error { _, _, err := OpenChecked("/dev/null"); return err }, "/dev/null: a character device, expected a regular file"},
		{"ReadDir(FIFO)", func() error { _, err := ReadDir(fifo); return err }, fifo + ": a named pipe (FIFO), expected a directory"},
		{"ReadDir(regular)", func() error { _, err := ReadDir(regular); return err }, regular + ": a regular file, expected a directory"},
	} {
		err := within(t, tc.what, tc.run)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s = %v, want %q", tc.what, err, tc.want)
		}
	}

	f, st, err := Open(regular)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8)
	if n, err := f.Read(b); err != nil || string(b[:n]) != "data" || st.Size() != 4 {
		t.Errorf("Open(regular file): read %q, size %d, %v", b[:n], st.Size(), err)
	}
	ents, err := ReadDir(dir)
	if err != nil || len(ents) != 3 {
		t.Errorf("ReadDir(dir) = %d entries, %v", len(ents), err)
	}
}

func TestTypeName(t *testing.T) {
	for _, tc := range []struct {
		m    os.FileMode
		want string
	}{
		{0o644, "a regular file"}, {os.ModeDir, "a directory"}, {os.ModeSymlink, "a symlink"},
		{os.ModeNamedPipe, "a named pipe (FIFO)"}, {os.ModeSocket, "a socket"},
		{os.ModeDevice | os.ModeCharDevice, "a character device"}, {os.ModeDevice, "a block device"},
	} {
		if got := TypeName(tc.m); got != tc.want {
			t.Errorf("TypeName(%v) = %q, want %q", tc.m, got, tc.want)
		}
	}
	if got := TypeName(os.ModeIrregular); !strings.HasPrefix(got, "an irregular file") {
		t.Errorf("TypeName(irregular) = %q", got)
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(p, 10); err != nil || string(b) != "0123456789" {
		t.Errorf("ReadFile(10 bytes, limit 10) = %q, %v", b, err)
	}
	if _, err := ReadFile(p, 9); err == nil || !strings.Contains(err.Error(), "10 bytes, more than the 9") {
		t.Errorf("ReadFile over the limit: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(fifo, 10); err == nil || !strings.Contains(err.Error(), "a named pipe (FIFO), expected a regular file") {
		t.Errorf("ReadFile(FIFO): %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), 10); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile(missing) = %v, want fs.ErrNotExist", err)
	}
}
