package fetch

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A file:// URL (a --mirror to a local directory) naming a FIFO or a device is refused by
// type at once: a FIFO blocked in open(2), /dev/zero read forever.
func TestFileURLRefusesSpecialFiles(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "x.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	c := fastClient()
	c.Offline = true
	for _, tc := range []struct{ path, want string }{
		{fifo, fifo + ": a named pipe (FIFO), expected a regular file"},
		{"/dev/zero", "/dev/zero: a character device, expected a regular file"},
	} {
		for _, op := range []struct {
			name string
			run  func() error
		}{
			{"Fetch", func() error { _, err := c.Fetch(context.Background(), newCache(t), "file://"+tc.path, ""); return err }},
			{"Get", func() error {
				rc, err := c.Get(context.Background(), "file://"+tc.path)
				if err == nil {
					rc.Close()
				}
				return err
			}},
		} {
			done := make(chan error, 1)
			go func() { done <- op.run() }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s(file://%s) = %v, want %q", op.name, tc.path, err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("%s(file://%s) still blocks after 5s", op.name, tc.path)
			}
		}
	}
}
