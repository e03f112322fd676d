package squashfs

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
)

// lateFile is a regular file of a late group (Options.Late): its data is stored after every
// group 0 file's, and its content waits in the spool file from off on.
type lateFile struct {
	ino       *inode
	name      string
	group     int
	off, size int64
}

// group is name's late group (0: path order).
func (b *builder) group(name string) int {
	if b.cfg.late == nil {
		return 0
	}
	return b.cfg.late(name)
}

// spoolLate copies a late file's content to the spool file, created on first use.
func (b *builder) spoolLate(ino *inode, name string, group int, r io.Reader, size int64) error {
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
	b.late = append(b.late, lateFile{ino: ino, name: name, group: group, off: b.spoolEnd, size: size})
	b.spoolEnd += size
	return nil
}

// writeLate stores the late groups' data after all others, group after group, in stream order
// within a group. Before each group it closes the fragment block being filled, so the group's
// small files' tails start fragment blocks of their own, and pads the data to the next 4 KiB
// boundary of the image, so what comes before a group moves it by whole 4 KiB blocks.
// Duplicate detection spans every group (it sees every group 0 file first): a file that turns
// out to share earlier data rewinds the data end to its own start, after the padding.
func (b *builder) writeLate(ctx context.Context) error {
	if len(b.late) == 0 {
		return nil
	}
	slices.SortStableFunc(b.late, func(x, y lateFile) int { return cmp.Compare(x.group, y.group) })
	for i, l := range b.late {
		if i == 0 || l.group != b.late[i-1].group {
			if err := b.flushFragment(); err != nil {
				return err
			}
			if err := b.pipe.submit(&job{kind: jobAlign}); err != nil {
				return err
			}
		}
		fd, err := b.addFileData(ctx, io.NewSectionReader(b.spool, l.off, l.size), l.size)
		if err != nil {
			return fmt.Errorf("squashfs: late file %q: %w", l.name, err)
		}
		l.ino.file = fd
	}
	b.cfg.log.Debug("squashfs: late groups stored last", "files", len(b.late), "bytes", b.spoolEnd)
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
