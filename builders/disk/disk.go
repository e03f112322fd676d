// Package disk writes a node's GPT disk image (ESP, ROOT-A, ROOT-B, STATE) as a sparse file,
// without root, loop devices or mounts, byte-identical for the same inputs.
package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/gpt"
)

// Sizes.
const (
	MiB = 1 << 20
	GiB = 1 << 30
)

// Defaults of Options.
const (
	DefaultDiskSize     = 3 * GiB
	DefaultESPSize      = 128 * MiB
	DefaultRootSize     = 1 * GiB
	DefaultMinStateSize = 256 * MiB
)

// align is the alignment of every partition start and of the sizes in Options.
const align = MiB

// Options shape the disk. Zero sizes take the defaults.
type Options struct {
	DiskSize     int64 // total; default 3 GiB
	ESPSize      int64 // default 128 MiB
	RootSize     int64 // size of ROOT-A and of ROOT-B; default 1 GiB
	MinStateSize int64 // default 256 MiB
	// Seed is the disk's identity (the image digest): the disk GUID, the partition GUIDs
	// (version-5 style UUIDs of Seed and the partition name) and the FAT volume ID derive
	// from it. Required.
	Seed []byte
	// MTime stamps every FAT directory entry (UTC, clamped to 1980..2107; zero = 1980-01-01).
	MTime  time.Time
	Logger *slog.Logger // nil discards
}

// Partition is one GPT entry. Start and Size are in bytes; Index is the 1-based entry number
// (the N of /dev/sdaN).
type Partition struct {
	Name        string
	Type, GUID  string
	Start, Size int64
	Index       int
}

// Layout is a planned disk.
type Layout struct {
	DiskSize   int64
	Partitions []Partition
	DiskGUID   string
}

// Find returns the partition named name.
func (l Layout) Find(name string) (Partition, bool) {
	for _, p := range l.Partitions {
		if p.Name == name {
			return p, true
		}
	}
	return Partition{}, false
}

// sizeString renders bytes as MiB for messages: "1024 MiB", or "1024.0 MiB (1073741825 bytes)"
// when rounding would hide the difference.
func sizeString(n int64) string {
	if n%MiB == 0 {
		return fmt.Sprintf("%d MiB", n/MiB)
	}
	return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/MiB, n)
}

func (o Options) withDefaults() (Options, error) {
	for _, f := range []struct {
		name string
		v    *int64
		def  int64
		flag string
	}{
		{"disk size", &o.DiskSize, DefaultDiskSize, "--disk-size"},
		{"ESP size", &o.ESPSize, DefaultESPSize, "--esp-size"},
		{"root size", &o.RootSize, DefaultRootSize, "--root-size"},
		{"minimum state size", &o.MinStateSize, DefaultMinStateSize, ""},
	} {
		switch {
		case *f.v < 0:
			return o, fmt.Errorf("%s %d is negative", f.name, *f.v)
		case *f.v == 0:
			*f.v = f.def
		case f.flag != "" && *f.v%align != 0:
			return o, fmt.Errorf("%s %d bytes is not a multiple of 1 MiB: fix %s", f.name, *f.v, f.flag)
		}
	}
	if len(o.Seed) == 0 {
		return o, errors.New("disk: Options.Seed is required (the image digest): it makes the disk's GUIDs")
	}
	return o, nil
}

// Plan lays out the disk: ESP, ROOT-A and ROOT-B from 1 MiB, 1 MiB aligned, and STATE up to the
// last MiB (which holds the backup GPT). It fails, before anything is written, when the root
// image does not fit ROOT-A, when the disk cannot hold ESP + 2 roots + the minimum STATE, or
// when a size is not MiB-aligned.
func Plan(opts Options, rootImageSize int64) (Layout, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return Layout{}, err
	}
	if rootImageSize < 0 {
		return Layout{}, fmt.Errorf("root image size %d is negative", rootImageSize)
	}
	if _, err := newFATGeometry(o.ESPSize); err != nil {
		return Layout{}, fmt.Errorf("ESP is %s but FAT32 needs at least %s: raise --esp-size: %w",
			sizeString(o.ESPSize), sizeString(fatMinSize()), err)
	}
	if rootImageSize > o.RootSize {
		return Layout{}, fmt.Errorf("root image is %s but %s is %s: raise --disk-size/--root-size",
			sizeString(rootImageSize), boot.LabelRootA, sizeString(o.RootSize))
	}
	stateMin := (o.MinStateSize + align - 1) / align * align
	need := align + o.ESPSize + 2*o.RootSize + stateMin + align
	if o.DiskSize < need {
		return Layout{}, fmt.Errorf("disk is %s but needs at least %s (%s ESP + 2 x %s root + %s minimum state + 2 MiB GPT): raise --disk-size or lower --root-size",
			sizeString(o.DiskSize), sizeString(need), sizeString(o.ESPSize), sizeString(o.RootSize), sizeString(stateMin))
	}

	l := Layout{DiskSize: o.DiskSize, DiskGUID: deriveGUID(o.Seed, "disk").String()}
	off := int64(align)
	for i, p := range []struct {
		name, typ string
		size      int64
	}{
		{boot.LabelESP, gpt.TypeESP, o.ESPSize},
		{boot.LabelRootA, gpt.TypeRootX86_64, o.RootSize},
		{boot.LabelRootB, gpt.TypeRootX86_64, o.RootSize},
		{boot.LabelState, gpt.TypeLinuxData, o.DiskSize - align - (off + o.ESPSize + 2*o.RootSize)},
	} {
		l.Partitions = append(l.Partitions, Partition{
			Name:  p.name,
			Type:  p.typ,
			GUID:  deriveGUID(o.Seed, "partition/"+p.name).String(),
			Start: off,
			Size:  p.size,
			Index: i + 1,
		})
		off += p.size
	}
	return l, nil
}

// fatVolumeID derives the ESP's FAT volume serial number from the seed.
func fatVolumeID(seed []byte) uint32 {
	u := deriveGUID(seed, "fat-volume-id/"+boot.LabelESP)
	return binary.BigEndian.Uint32(u[0:4])
}

// File is one file of the ESP. Path is relative and '/'-separated (EFI/BOOT/BOOTX64.EFI,
// loader/entries/imgctl-a+3.conf); directories are implied. Open must yield exactly Size bytes.
type File struct {
	Path string
	Size int64
	Open func() (io.ReadCloser, error)
}

// copyChunk is the unit of streaming copies and of cancellation checks.
const copyChunk = 4 * MiB

// Write writes the disk image planned as l to path: path.tmp is written, synced and renamed.
// The file is sparse: only the GPT, the ESP's non-zero sectors and ROOT-A's data are written;
// ROOT-B and STATE stay holes (zeros). esp are the ESP's files, rootA the ROOT-A image
// (rootASize bytes; copy_file_range when it is an *os.File). opts gives the seed of the FAT
// volume ID (it must be the seed l was planned with: checked), the FAT timestamps and the
// logger. On any error, including a cancelled ctx, neither path nor path.tmp is left behind.
func Write(ctx context.Context, path string, l Layout, esp []File, rootA io.ReaderAt, rootASize int64, opts Options) (err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(opts.Seed) == 0 {
		return errors.New("disk: Options.Seed is required")
	}
	if want := deriveGUID(opts.Seed, "disk").String(); !strings.EqualFold(l.DiskGUID, want) {
		return fmt.Errorf("layout disk GUID %s was not planned with this Options.Seed (which gives %s)", l.DiskGUID, want)
	}
	espPart, ok := l.Find(boot.LabelESP)
	if !ok {
		return fmt.Errorf("layout has no %s partition", boot.LabelESP)
	}
	rootPart, ok := l.Find(boot.LabelRootA)
	if !ok {
		return fmt.Errorf("layout has no %s partition", boot.LabelRootA)
	}
	if rootASize < 0 || rootASize > 0 && rootA == nil {
		return fmt.Errorf("root image: size %d without a reader", rootASize)
	}
	if rootASize > rootPart.Size {
		return fmt.Errorf("root image is %s but %s is %s: raise --disk-size/--root-size",
			sizeString(rootASize), boot.LabelRootA, sizeString(rootPart.Size))
	}
	tables, err := buildGPT(l)
	if err != nil {
		return fmt.Errorf("GPT: %w", err)
	}
	fs, err := planFAT(espPart.Size, esp, fatOptions{
		volumeID: fatVolumeID(opts.Seed),
		label:    boot.LabelESP,
		mtime:    opts.MTime,
		hidden:   uint32(espPart.Start / sectorSize),
	})
	if err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	log.DebugContext(ctx, "disk layout", "path", path, "size", l.DiskSize, "esp_files", len(esp),
		"esp_clusters_used", fs.used, "esp_cluster_bytes", fs.g.clusterBytes(), "root_image", rootASize)

	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create disk image: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Truncate(l.DiskSize); err != nil {
		return fmt.Errorf("size disk image: %w", err)
	}
	for _, r := range tables {
		if err := writeNonZero(f, r.data, r.off); err != nil {
			return fmt.Errorf("write GPT: %w", err)
		}
	}
	if err := fs.write(ctx, f, espPart.Start); err != nil {
		return fmt.Errorf("write ESP: %w", err)
	}
	if rootASize > 0 {
		if err := copyRoot(ctx, f, rootPart.Start, rootA, rootASize); err != nil {
			return fmt.Errorf("write %s: %w", boot.LabelRootA, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync disk image: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close disk image: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rename disk image: %w", err)
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		_ = d.Sync() // the rename's durability; best effort
		_ = d.Close()
	}
	log.InfoContext(ctx, "wrote disk image", "path", path, "size", l.DiskSize, "disk_guid", l.DiskGUID)
	return nil
}

// copyRoot copies n bytes of src to dst at off: with copy_file_range when src is a file,
// otherwise (or when the kernel declines) by reading chunks and writing their non-zero sectors.
func copyRoot(ctx context.Context, dst *os.File, off int64, src io.ReaderAt, n int64) error {
	var done int64
	if sf, ok := src.(*os.File); ok {
		var err error
		done, err = copyFileRange(ctx, dst, off, sf, n)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errNoCopyFileRange) {
			return err
		}
	}
	buf := make([]byte, copyChunk)
	_, err := copySparse(ctx, dst, off+done, io.NewSectionReader(src, done, n-done), n-done, buf)
	return err
}

var errNoCopyFileRange = errors.New("copy_file_range unavailable")

// copyFileRange copies with copy_file_range in chunks, checking ctx between them. It returns
// errNoCopyFileRange (and how much it copied) when the kernel or file systems do not support it.
func copyFileRange(ctx context.Context, dst *os.File, off int64, src *os.File, n int64) (int64, error) {
	var done int64
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		roff, woff := done, off+done
		m, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n-done, 64*MiB)), 0)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EINVAL) ||
				errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EPERM) {
				return done, fmt.Errorf("%w: %w", errNoCopyFileRange, err)
			}
			return done, fmt.Errorf("copy_file_range: %w", err)
		}
		if m == 0 {
			return done, fmt.Errorf("%w (%d of %d bytes)", errShort, done, n)
		}
		done += int64(m)
	}
	return done, nil
}
