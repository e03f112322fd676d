package initrd

import (
	"bytes"
	"fmt"
	"io"
)

// newc is a writer of the "new ASCII" cpio format the kernel unpacks into its initramfs.
// Every field that could vary between builds (inode numbers, times, owners) is fixed.
type newc struct {
	w     io.Writer
	ino   uint32
	mtime int64
	off   int64
	err   error
}

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeChar = 0o020000
	modeLink = 0o120000
)

func (c *newc) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.off += int64(n)
	c.err = err
}

func (c *newc) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// entry writes one header, its name and its content.
func (c *newc) entry(name string, mode uint32, size int64, devMajor, devMinor uint32, body io.Reader) error {
	if size > 0xffffffff {
		return fmt.Errorf("cpio: %s is too large for newc (%d bytes)", name, size)
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, uint32(c.mtime), uint32(size), 0, 0, devMajor, devMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	if body != nil && size > 0 {
		if c.err != nil {
			return c.err
		}
		n, err := io.CopyN(c.w, body, size)
		c.off += n
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
	}
	c.pad()
	return c.err
}

func (c *newc) dir(name string) error { return c.entry(name, modeDir|0o755, 0, 0, 0, nil) }

func (c *newc) file(name string, perm uint32, data []byte) error {
	return c.entry(name, modeReg|perm, int64(len(data)), 0, 0, bytes.NewReader(data))
}

func (c *newc) trailer() error {
	return c.entry("TRAILER!!!", 0, 0, 0, 0, nil)
}
