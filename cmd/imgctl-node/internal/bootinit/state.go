package bootinit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/gpt"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/boot"
)

// setupState finds the STATE partition; on first boot (no ext4 on it) grows it to the end of
// the disk and formats it with the image's own mkfs.ext4; then mounts it and makes /var an
// overlay whose upper layer lives on it. A missing STATE partition is not an error: /var then
// stays on the tmpfs overlay. It says whether STATE is mounted.
func setupState(ctx context.Context, log *steplog.Logger, sys blockdev.Sys, spec cmdline.Device) (bool, error) {
	d, dev, err := findState(ctx, log, sys, spec)
	if err != nil || d.Name == "" {
		return false, err
	}
	fs, err := probeFS(dev)
	if err != nil {
		return false, log.Start("format-state").Fail(err, "device", dev)
	}
	if fs == "" {
		growState(log, sys, d)
		if err := formatState(ctx, log, dev); err != nil {
			return false, err
		}
	} else {
		log.Start("grow-state").Skip("device", dev, "reason", "already formatted")
		if fs != "ext4" {
			return false, log.Start("format-state").Fail(fmt.Errorf("%s holds %s, not ext4: refusing to format or mount it", dev, fs), "device", dev)
		}
		log.Start("format-state").Skip("device", dev, "reason", "ext4 present")
	}
	if err := mountState(log, dev); err != nil {
		return false, err
	}
	return true, nil
}

func findState(ctx context.Context, log *steplog.Logger, sys blockdev.Sys, spec cmdline.Device) (blockdev.Dev, string, error) {
	s := log.Start("find-state")
	wctx, cancel := context.WithTimeout(ctx, stateWait)
	defer cancel()
	d, err := sys.Wait(wctx, spec, pollEvery)
	if errors.Is(err, blockdev.ErrNotFound) {
		s.Skip("want", spec, "reason", "no such partition: /var stays in memory")
		return blockdev.Dev{}, "", nil
	}
	if err != nil {
		return d, "", s.Fail(err, "want", spec)
	}
	p, err := sys.EnsureNode(d)
	if err != nil {
		return d, "", s.Fail(err, "want", spec)
	}
	s.Done("want", spec, "device", p, "label", d.PartName)
	return d, p, nil
}

// probeFS names the filesystem on dev: "" for none it knows of (a blank STATE partition).
func probeFS(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", dev, err)
	}
	defer f.Close()
	b := make([]byte, 65536+4096)
	n, err := f.ReadAt(b, 0)
	if n < 2048 {
		return "", fmt.Errorf("probe %s: %w", dev, err)
	}
	b = b[:n]
	switch {
	case binary.LittleEndian.Uint16(b[1080:]) == 0xEF53:
		return "ext4", nil
	case bytes.HasPrefix(b, []byte("XFSB")):
		return "xfs", nil
	case bytes.HasPrefix(b, []byte("LUKS\xba\xbe")):
		return "luks", nil
	case len(b) >= 65600+8 && string(b[65600:65608]) == "_BHRfS_M":
		return "btrfs", nil
	}
	return "", nil
}

// growState extends the STATE partition to the end of its disk. Failure is not fatal: the
// partition is formatted at its current size.
func growState(log *steplog.Logger, sys blockdev.Sys, d blockdev.Dev) {
	s := log.Start("grow-state")
	res, err := growPartition(sys, d)
	if err != nil {
		_ = s.Fail(err, "device", "/dev/"+d.Name)
		return
	}
	ss, _ := sys.SectorSize(d.Disk)
	size := int64(res.Partition.LastLBA-res.Partition.FirstLBA+1) * int64(ss)
	s.Done("device", "/dev/"+d.Name, "disk", "/dev/"+d.Disk, "grown", res.Grown, "moved-backup-gpt", res.MovedBackup,
		"size-mib", size>>20)
}

func growPartition(sys blockdev.Sys, d blockdev.Dev) (gpt.GrowResult, error) {
	if d.Disk == "" || d.PartN == 0 {
		return gpt.GrowResult{}, fmt.Errorf("%s is not a partition", d.Name)
	}
	ss, err := sys.SectorSize(d.Disk)
	if err != nil {
		return gpt.GrowResult{}, err
	}
	size, err := sys.Size(d.Disk)
	if err != nil {
		return gpt.GrowResult{}, err
	}
	disk, err := sys.Lookup(d.Disk)
	if err != nil {
		return gpt.GrowResult{}, err
	}
	diskPath, err := sys.EnsureNode(disk)
	if err != nil {
		return gpt.GrowResult{}, err
	}
	f, err := os.OpenFile(diskPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return gpt.GrowResult{}, fmt.Errorf("grow: %w", err)
	}
	defer f.Close()
	res, err := gpt.Grow(f, ss, size, d.PartN)
	if err != nil {
		return res, fmt.Errorf("grow %s: %w", diskPath, err)
	}
	if !res.Changed() {
		return res, nil
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("grow: sync %s: %w", diskPath, err)
	}
	if res.Grown {
		p := res.Partition
		if err := resizePartition(f, d.PartN, int64(p.FirstLBA)*int64(ss), int64(p.LastLBA-p.FirstLBA+1)*int64(ss)); err != nil {
			return res, err
		}
	}
	return res, nil
}

// resizePartition tells the kernel about the partition's new size. BLKRRPART would fail with
// EBUSY: the root image on the same disk is mounted.
func resizePartition(disk *os.File, partN int, start, length int64) error {
	p := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(partN)}
	arg := unix.BlkpgIoctlArg{
		Op:      unix.BLKPG_RESIZE_PARTITION,
		Datalen: int32(unsafe.Sizeof(p)),
		Data:    (*byte)(unsafe.Pointer(&p)),
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, disk.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return fmt.Errorf("grow: BLKPG resize partition %d: %w", partN, errno)
	}
	return nil
}

// formatState runs the image's own mkfs.ext4 inside the read-only lower root, with /dev,
// /proc and /sys bound into it.
func formatState(ctx context.Context, log *steplog.Logger, dev string) error {
	s := log.Start("format-state")
	mkfs := ""
	for _, c := range []string{"/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4", "/sbin/mke2fs", "/usr/sbin/mke2fs"} {
		if _, err := os.Lstat(filepath.Join(LowerDir, c)); err == nil {
			mkfs = c
			break
		}
	}
	if mkfs == "" {
		return s.Fail(errors.New("the root image has no mkfs.ext4 (e2fsprogs)"), "device", dev)
	}
	var bound []string
	defer func() {
		for i := len(bound) - 1; i >= 0; i-- {
			_ = unix.Unmount(bound[i], unix.MNT_DETACH)
		}
	}()
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		target := filepath.Join(LowerDir, m)
		if st, err := os.Stat(target); err != nil || !st.IsDir() {
			if m == "/dev" {
				return s.Fail(fmt.Errorf("the root image has no /dev to bind for mkfs"), "device", dev)
			}
			continue
		}
		if err := unix.Mount(m, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return s.Fail(fmt.Errorf("bind %s into %s: %w", m, LowerDir, err), "device", dev)
		}
		bound = append(bound, target)
	}
	// nodiscard: a fresh cloud volume reads as zeros already, and discarding a large one is slow.
	args := []string{"-F", "-q", "-E", "nodiscard", "-L", boot.LabelState, dev}
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	cmd.SysProcAttr = &unix.SysProcAttr{Chroot: LowerDir}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return s.Fail(fmt.Errorf("%s %s: %w: %s", mkfs, strings.Join(args, " "), err, bytes.TrimSpace(out)), "device", dev)
	}
	s.Done("device", dev, "mkfs", mkfs, "label", boot.LabelState)
	return nil
}

// mountState mounts STATE and puts /var's overlay upper layer on it.
func mountState(log *steplog.Logger, dev string) error {
	s := log.Start("mount-state")
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return s.Fail(err)
	}
	if err := unix.Mount(dev, StateDir, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return s.Fail(fmt.Errorf("mount ext4 %s on %s: %w", dev, StateDir, err), "device", dev)
	}
	upper, work := varUpper, StateDir+"/var/work"
	lower := LowerDir + "/var"
	if st, err := os.Stat(lower); err != nil || !st.IsDir() {
		lower = StateDir + "/var/empty" // an image without /var: start from nothing
	}
	target := RootDir + "/var"
	if err := mkdirs(upper, work, lower, target); err != nil {
		return s.Fail(err, "device", dev)
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return s.Fail(fmt.Errorf("mount overlay on %s (%s): %w", target, opts, err), "device", dev)
	}
	var sfs unix.Statfs_t
	var sizeMiB int64
	if unix.Statfs(StateDir, &sfs) == nil {
		sizeMiB = int64(sfs.Blocks) * sfs.Bsize >> 20
	}
	s.Done("device", dev, "dir", StateDir, "var", target, "size-mib", sizeMiB)
	return nil
}
