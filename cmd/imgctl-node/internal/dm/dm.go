// Package dm drives the kernel's device-mapper through ioctls on /dev/mapper/control, as
// dmsetup does, without libdevmapper: create a device, load a table (here a dm-verity target),
// resume it, read its status, remove it. The init uses it to map the root partition through
// dm-verity before mounting it.
//
// The requests are struct dm_ioctl (312 bytes) followed by the data area (struct
// dm_target_spec, 40 bytes, each followed by its NUL-terminated parameters padded to 8 bytes),
// encoded field by field at the offsets of linux/dm-ioctl.h (see layout.go).
package dm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Control device: /dev/mapper/control is misc device 10:236 (Documentation/admin-guide/devices.txt).
const (
	ControlMajor = 10
	ControlMinor = 236
)

// ioctlVersion is the interface version every request carries: major 4 is the only one the
// kernel accepts; minor 0 asks for nothing newer than the first 4.x (every call here is in it).
var ioctlVersion = [3]uint32{4, 0, 0}

// statusBufferSize is the data area offered to DM_TABLE_STATUS: one target's status line is short.
const statusBufferSize = 16 << 10

// Control is an open /dev/mapper/control.
type Control struct {
	path  string
	f     *os.File
	ioctl func(fd uintptr, req uint, buf []byte) error // the syscall; tests put a fake kernel here
}

// Open opens devDir/mapper/control, creating the node (char 10:236) when it is missing (a
// devtmpfs creates it only once dm-mod has registered; a static /dev may lack it).
func Open(devDir string) (*Control, error) {
	p := filepath.Join(devDir, unix.DM_DIR, unix.DM_CONTROL_NODE)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("device-mapper control: %w", err)
		}
		err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(ControlMajor, ControlMinor)))
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("device-mapper control: create %s (char %d:%d): %w", p, ControlMajor, ControlMinor, err)
		}
	}
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("device-mapper control: %w (are dm-mod and dm-verity in the initrd's module list?)", err)
	}
	return &Control{path: p, f: f, ioctl: sysIoctl}, nil
}

// Close closes the control device.
func (c *Control) Close() error { return c.f.Close() }

func sysIoctl(fd uintptr, req uint, buf []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// call sends one request: h followed by data, in a buffer of h's header plus max(len(data),
// extra) bytes (extra: room for the kernel's answer). It returns the answered header and the
// answer's data area.
func (c *Control) call(name string, req uint, h Header, data []byte, extra int) (Header, []byte, error) {
	h.Version = ioctlVersion
	size := HeaderSize + max(len(data), extra)
	buf := make([]byte, size)
	h.DataSize = uint32(size)
	h.DataStart = HeaderSize
	if err := h.MarshalTo(buf); err != nil {
		return Header{}, nil, fmt.Errorf("device-mapper %s: %w", name, err)
	}
	copy(buf[HeaderSize:], data)
	if err := c.ioctl(c.f.Fd(), req, buf); err != nil {
		return Header{}, nil, fmt.Errorf("device-mapper %s %q: %s: %w", name, h.Name, c.path, err)
	}
	out, err := UnmarshalHeader(buf)
	if err != nil {
		return Header{}, nil, fmt.Errorf("device-mapper %s %q: answer: %w", name, h.Name, err)
	}
	if out.DataSize > uint32(len(buf)) || out.DataStart < HeaderSize {
		return out, nil, fmt.Errorf("device-mapper %s %q: answer's data area [%d, %d) outside the %d-byte buffer", name, h.Name, out.DataStart, out.DataSize, len(buf))
	}
	if out.DataSize <= out.DataStart {
		// Nothing returned: the kernel then sets data_size to offsetof(struct dm_ioctl, data).
		return out, nil, nil
	}
	return out, buf[out.DataStart:out.DataSize], nil
}

// Version returns the kernel's device-mapper interface version (DM_VERSION); it fails when
// the kernel does not speak major version 4.
func (c *Control) Version() ([3]uint32, error) {
	h, _, err := c.call("version", unix.DM_VERSION, Header{}, nil, 0)
	if err != nil {
		return [3]uint32{}, err
	}
	if h.Version[0] != ioctlVersion[0] {
		return h.Version, fmt.Errorf("device-mapper version: kernel speaks %d.%d.%d, want %d.x", h.Version[0], h.Version[1], h.Version[2], ioctlVersion[0])
	}
	return h.Version, nil
}

// Create creates the device name without a table (DM_DEV_CREATE) and returns its device
// number (unix.Major/Minor split it; the block device is dm-MINOR).
func (c *Control) Create(name, uuid string) (uint64, error) {
	h, _, err := c.call("create", unix.DM_DEV_CREATE, Header{Name: name, UUID: uuid}, nil, 0)
	if err != nil {
		return 0, err
	}
	return h.Dev, nil
}

// Load loads targets as name's inactive table (DM_TABLE_LOAD), read-only when readOnly.
func (c *Control) Load(name string, readOnly bool, targets ...Target) error {
	data, err := MarshalTargets(targets)
	if err != nil {
		return fmt.Errorf("device-mapper load %q: %w", name, err)
	}
	h := Header{Name: name, TargetCount: uint32(len(targets))}
	if readOnly {
		h.Flags |= unix.DM_READONLY_FLAG
	}
	_, _, err = c.call("load", unix.DM_TABLE_LOAD, h, data, 0)
	return err
}

// Resume makes name's loaded table live (DM_DEV_SUSPEND without DM_SUSPEND_FLAG) and returns
// the device number.
func (c *Control) Resume(name string) (uint64, error) {
	h, _, err := c.call("resume", unix.DM_DEV_SUSPEND, Header{Name: name}, nil, 0)
	if err != nil {
		return 0, err
	}
	return h.Dev, nil
}

// Status returns each target's status line (DM_TABLE_STATUS, STATUSTYPE_INFO): for verity
// "V" (verified so far) or "C" (a corrupted block was detected).
func (c *Control) Status(name string) ([]TargetStatus, error) {
	h, data, err := c.call("status", unix.DM_TABLE_STATUS, Header{Name: name}, nil, statusBufferSize)
	if err != nil {
		return nil, err
	}
	if h.Flags&unix.DM_BUFFER_FULL_FLAG != 0 {
		return nil, fmt.Errorf("device-mapper status %q: the status does not fit in %d bytes", name, statusBufferSize)
	}
	st, err := UnmarshalTargets(data, h.TargetCount)
	if err != nil {
		return nil, fmt.Errorf("device-mapper status %q: %w", name, err)
	}
	return st, nil
}

// Remove removes the device name (DM_DEV_REMOVE).
func (c *Control) Remove(name string) error {
	_, _, err := c.call("remove", unix.DM_DEV_REMOVE, Header{Name: name}, nil, 0)
	return err
}
