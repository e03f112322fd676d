package squashfs

import (
	"context"
	"fmt"
	"io"
	"os"
)

// lateFile is a regular file whose data is stored after every other file's (Options.Late):
// its content waits in the spool file from off on.
type lateFile struct {
	ino       *inode
	name      string
	off, size int64
}

// spoolLate copies a late file's content to the spool file, created on first use.
func (b *builder) spoolLate(ino *inode, name string, r io.Reader, size int64) error {
	if b.spool == nil {
		f, err := os.CreateTemp(b.cfg.tempDir, "squashfs-late-*")
		if err != nil {
			return fmt.Errorf("spooling late file: %w", err)
		}
		b.spool = f
	}
	n, err := io.CopyN(b.spool, r, size)
	if err != nil {
		return fmt.Errorf("spooling late file to %s (%d of %d bytes): %w", b.spool.Name(), n, size, err)
	}
	b.late = append(b.late, lateFile{ino: ino, name: name, off: b.spoolEnd, size: size})
	b.spoolEnd += size
	return nil
}

// writeLate stores the late files' data, in stream order, after all others: it first closes
// the normal files' last fragment block, so the late files' tails start fragment blocks of
// their own. Duplicate detection spans both (it sees every normal file first).
func (b *builder) writeLate(ctx context.Context) error {
	if len(b.late) == 0 {
		return nil
	}
	if err := b.flushFragment(); err != nil {
		return err
	}
	for _, l := range b.late {
		fd, err := b.addFileData(ctx, io.NewSectionReader(b.spool, l.off, l.size), l.size)
		if err != nil {
			return fmt.Errorf("squashfs: late file %q: %w", l.name, err)
		}
		l.ino.file = fd
	}
	b.cfg.log.Debug("squashfs: late files stored last", "files", len(b.late), "bytes", b.spoolEnd)
	return nil
}

// closeSpool removes the spool file, if any.
func (b *builder) closeSpool() {
	if b.spool == nil {
		return
	}
	name := b.spool.Name()
	if err := b.spool.Close(); err != nil {
		b.cfg.log.Warn("squashfs: closing spool file", "path", name, "err", err)
	}
	if err := os.Remove(name); err != nil {
		b.cfg.log.Warn("squashfs: removing spool file", "path", name, "err", err)
	}
	b.spool = nil
}
