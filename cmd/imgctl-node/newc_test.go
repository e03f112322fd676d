package main

import (
	"fmt"
	"io"
)

// newcWriter writes a "newc" (SVR4, no CRC) cpio archive as the kernel's initramfs unpacker
// reads it: 110-byte ASCII header, NUL-terminated name and data each padded to 4 bytes.
type newcWriter struct {
	w   io.Writer
	off int64
	ino uint32
	err error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

func (c *newcWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *newcWriter) dir(name string)                         { c.entry(name, modeDir|0o755, 0, 0, nil) }
func (c *newcWriter) file(name string, mode uint32, b []byte) { c.entry(name, modeFile|mode, 0, 0, b) }
func (c *newcWriter) chr(name string, maj, min uint32)        { c.entry(name, modeChr|0o600, maj, min, nil) }

// close writes the trailer.
func (c *newcWriter) close() error {
	c.ino = 0
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

func (c *newcWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *newcWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
