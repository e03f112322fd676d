// Package loopdev attaches a file to a read-only loop block device, for mounting the
// downloaded network root image.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Attach gives file a free loop device (from devDir/loop-control), read-only and with
// autoclear, and returns the device open: mount it (dev.Name() is its path), then close it.
// Autoclear detaches the device when its last user lets go: the mount, or this file if the
// mount failed. It uses LOOP_CONFIGURE (Linux 5.8) and falls back to LOOP_SET_FD +
// LOOP_SET_STATUS64.
func Attach(file, devDir string) (dev *os.File, err error) {
	f, err := os.OpenFile(file, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach loop device: %w", err)
	}
	defer f.Close()
	ctlPath := filepath.Join(devDir, "loop-control")
	ctl, err := os.OpenFile(ctlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s to a loop device: %w (is the loop module in the initrd's module list?)", file, err)
	}
	defer ctl.Close()
	var lastErr error
	for range 5 { // another process may take the free device between the two calls
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %s LOOP_CTL_GET_FREE: %w", file, ctlPath, err)
		}
		d, err := configure(filepath.Join(devDir, "loop"+strconv.Itoa(n)), f, file)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

func configure(dev string, f *os.File, file string) (*os.File, error) {
	d, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", file, err)
	}
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}
	copy(info.File_name[:len(info.File_name)-1], file)
	cfg := unix.LoopConfig{Fd: uint32(f.Fd()), Info: info}
	err = unix.IoctlLoopConfigure(int(d.Fd()), &cfg)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		// Before Linux 5.8.
		if err = unix.IoctlSetInt(int(d.Fd()), unix.LOOP_SET_FD, int(f.Fd())); err == nil {
			if err = unix.IoctlLoopSetStatus64(int(d.Fd()), &info); err != nil {
				_ = unix.IoctlSetInt(int(d.Fd()), unix.LOOP_CLR_FD, 0)
			}
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("attach %s to %s: %w", file, dev, err)
	}
	return d, nil
}
