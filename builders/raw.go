package builders

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders/disk"
	"github.com/imgctl/imgctl/builders/initrd"
	"github.com/imgctl/imgctl/builders/sparse"
	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/builders/squashfs/blockcache"
	bootc "github.com/imgctl/imgctl/images/boot" // not boot: the bootloader variable below
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// bootloaderPath is where the bootloader layer (Debian's systemd-boot-efi) puts systemd-boot.
const bootloaderPath = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// bootTries is systemd-boot's boot counter for a new slot: after this many boots that never
// reach boot-complete.target the entry is marked bad and the other slot boots instead.
const bootTries = 3

// RawOptions configure the raw disk target.
type RawOptions struct {
	DiskSize    int64  // 0 = disk.DefaultDiskSize
	RootSize    int64  // size of ROOT-A and ROOT-B; 0 = disk.DefaultRootSize
	Compression string // squashfs compressor; "" = zstd
	// CompressionLevel 0 picks a fast level (zstd 3): compression is the build's hot spot, and
	// level 3 is within a few percent of level 15's size on a node rootfs.
	CompressionLevel int
	Agent            string // the static imgctl-node binary, /init of the initrd
}

// rawTarget writes disk.raw: GPT with ESP (systemd-boot, slot A's kernel and initrd), ROOT-A
// (the squashfs rootfs), an empty ROOT-B and an unformatted STATE partition.
type rawTarget struct{}

func (rawTarget) Name() string { return "raw" }

func (rawTarget) Write(ctx context.Context, b *Build) ([]manifest.Artifact, error) {
	o := b.Raw
	if o.Agent == "" {
		return nil, errors.New("the raw target needs the imgctl-node binary for the initrd (--node-agent PATH; make build puts it in bin/)")
	}
	if o.Compression == "" {
		o.Compression = "zstd"
	}
	if o.CompressionLevel == 0 && o.Compression == "zstd" {
		o.CompressionLevel = 3
	}
	if !slices.Contains(squashfs.Compressors(), o.Compression) {
		return nil, fmt.Errorf("unknown compressor %q (supported: %s)", o.Compression, strings.Join(squashfs.Compressors(), ", "))
	}
	mtime := time.Unix(b.Epoch, 0).UTC()
	kernel, boot, closeBoot, err := bootFiles(ctx, b)
	if err != nil {
		return nil, err
	}
	defer closeBoot()

	work, err := b.Store.TempDir("raw-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	// The initrd first: it fails fast when the kernel lacks a module root needs.
	var ird bytes.Buffer
	if _, err := initrd.Write(ctx, &ird, kernel, initrd.Options{Agent: o.Agent, MTime: mtime}); err != nil {
		return nil, err
	}
	sqPath := filepath.Join(work, "rootfs.squashfs")
	sq, err := os.Create(sqPath)
	if err != nil {
		return nil, err
	}
	defer sq.Close()
	sqOpts := squashfs.Options{Compression: o.Compression, Level: o.CompressionLevel, MTime: b.Epoch, Logger: b.Logger}
	// Compressed blocks of earlier builds: a rebuild compresses only the blocks that changed.
	log := b.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	blocks, err := blockcache.Open(filepath.Join(b.Env.Cache.Dir(), "squashfs-blocks"), blockcache.Options{Logger: log})
	if err != nil {
		log.Warn("squashfs block cache unavailable, compressing every block", "err", err)
	} else {
		sqOpts.Blocks = blocks
	}
	// The rootfs: from the store when a target already composed it there, otherwise composed
	// straight into the squashfs writer (never written out: compose and compression overlap).
	var tarStream io.Reader
	var waitCompose func() error
	if b.Rootfs.Digest != "" {
		f, err := openBlob(b.Store, b.Rootfs.Digest)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		tarStream = io.NewSectionReader(f, 0, b.Rootfs.Size)
	} else {
		r, wait, err := b.RootfsStream(ctx)
		if err != nil {
			return nil, err
		}
		tarStream, waitCompose = r, func() error {
			_, _ = io.Copy(io.Discard, r) // whatever the tar reader left: let compose finish
			r.Close()
			return wait()
		}
		defer func() {
			if waitCompose != nil {
				r.Close()
				_ = wait()
			}
		}()
	}
	sqRes, err := squashfs.Write(ctx, sq, tarStream, sqOpts)
	if waitCompose != nil {
		if werr := waitCompose(); err == nil && werr != nil {
			err = fmt.Errorf("composing the rootfs: %w", werr)
		}
		waitCompose = nil
	}
	if blocks != nil {
		if err != nil {
			blocks.Discard()
		} else if cerr := blocks.Close(); cerr != nil {
			log.Warn("squashfs block cache", "err", cerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("writing squashfs: %w", err)
	}

	// The root's digest (for A/B updates to verify what they write) is computed while the disk
	// is being written: two cores, two jobs.
	type digestResult struct {
		d   digest.Digest
		err error
	}
	sqDigestC := make(chan digestResult, 1)
	go func() {
		d, err := source.HashFile(ctx, sqPath)
		sqDigestC <- digestResult{d, err}
	}()
	sqDigestDone := false
	defer func() {
		if !sqDigestDone {
			<-sqDigestC
		}
	}()

	seed := []byte(b.Rootfs.Digest)
	dopts := disk.Options{DiskSize: o.DiskSize, RootSize: o.RootSize, Seed: seed, MTime: mtime, Logger: b.Logger}
	layout, err := disk.Plan(dopts, sqRes.Size)
	if err != nil {
		return nil, err
	}
	rootA, _ := layout.Find(bootc.LabelRootA)
	state, _ := layout.Find(bootc.LabelState)
	cmdline := append(append([]string{}, b.Spec.Spec.Kernel.Cmdline...),
		bootc.Param(bootc.KeyRoot, bootc.PartUUIDDevice(rootA.GUID)), bootc.Param(bootc.KeyState, bootc.PartUUIDDevice(state.GUID)))
	esp := []disk.File{
		sectionFile("EFI/BOOT/BOOTX64.EFI", boot),
		sectionFile("EFI/systemd/systemd-bootx64.efi", boot),
		bytesFile("loader/loader.conf", []byte("timeout 0\neditor no\nauto-entries no\nauto-firmware no\n")),
		bytesFile(fmt.Sprintf("loader/entries/imgctl-a+%d.conf", bootTries), loaderEntry("a", b.Epoch, cmdline)),
		sectionFile("imgctl/a/vmlinuz", kernel.Vmlinuz()),
		bytesFile("imgctl/a/initrd.img", ird.Bytes()),
	}
	diskPath := filepath.Join(work, "disk.raw")
	if err := disk.Write(ctx, diskPath, layout, esp, sq, sqRes.Size, dopts); err != nil {
		return nil, fmt.Errorf("writing disk: %w", err)
	}
	// The store keeps the disk as a sparse image: hashing gigabytes of zeros would cost more
	// than the rest of the build.
	dd, dsize, err := writeSparse(ctx, b.Store, diskPath)
	if err != nil {
		return nil, err
	}
	kd, ksize, err := b.Store.WriteBlob(ctx, kernel.Vmlinuz(), -1, "")
	if err != nil {
		return nil, err
	}
	id, isize, err := b.Store.WriteBlob(ctx, bytes.NewReader(ird.Bytes()), -1, "")
	if err != nil {
		return nil, err
	}
	sqd := <-sqDigestC
	sqDigestDone = true
	if sqd.err != nil {
		return nil, sqd.err
	}
	sqDigest := sqd.d
	parts, err := json.Marshal(layout.Partitions)
	if err != nil {
		return nil, err
	}
	return []manifest.Artifact{
		{Name: "disk.simg", MediaType: manifest.DiskSparseMediaType, Digest: dd, Size: dsize, Annotations: map[string]string{
			"dev.imgctl.disk.size":       fmt.Sprint(layout.DiskSize),
			"dev.imgctl.disk.partitions": string(parts),
			"dev.imgctl.disk.guid":       layout.DiskGUID,
			"dev.imgctl.root.digest":     string(sqDigest),
			"dev.imgctl.root.size":       fmt.Sprint(sqRes.Size),
			"dev.imgctl.root.compressor": o.Compression,
			"dev.imgctl.kernel.cmdline":  strings.Join(cmdline, " "),
		}},
		{Name: "vmlinuz", MediaType: manifest.KernelMediaType, Digest: kd, Size: ksize, Annotations: map[string]string{"dev.imgctl.kernel.release": kernel.Release}},
		{Name: "initrd.img", MediaType: manifest.InitrdMediaType, Digest: id, Size: isize},
	}, nil
}

// loaderEntry is a Boot Loader Specification entry for one slot. Its version is the build's
// SOURCE_DATE_EPOCH, so systemd-boot prefers the newer image and falls back to the other
// slot when the newer one has used up its boot tries.
func loaderEntry(slot string, version int64, cmdline []string) []byte {
	return []byte(fmt.Sprintf("title imgctl node (slot %s)\nsort-key imgctl\nversion %d\nlinux /imgctl/%s/vmlinuz\ninitrd /imgctl/%s/initrd.img\noptions %s\n",
		strings.ToUpper(slot), version, slot, slot, strings.Join(cmdline, " ")))
}

func bytesFile(path string, data []byte) disk.File {
	return disk.File{Path: path, Size: int64(len(data)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}}
}

func sectionFile(path string, s *io.SectionReader) disk.File {
	return disk.File{Path: path, Size: s.Size(), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(s, 0, s.Size())), nil
	}}
}

// findRegular returns the content of one regular file of a tar.
func findRegular(ctx context.Context, r io.ReaderAt, size int64, name string) (*io.SectionReader, error) {
	sr := io.NewSectionReader(r, 0, size)
	tr := tar.NewReader(sr)
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the rootfs has no %s", name)
		}
		if err != nil {
			return nil, err
		}
		if hdr.Name == name && hdr.Typeflag == tar.TypeReg {
			off, _ := sr.Seek(0, io.SeekCurrent)
			return io.NewSectionReader(r, off, hdr.Size), nil
		}
	}
}

// writeSparse encodes the disk at src as an Android sparse image straight into the store
// (one pass: the blob writer hashes what it writes).
func writeSparse(ctx context.Context, st *store.Store, src string) (digest.Digest, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", 0, err
	}
	w, err := st.NewBlobWriter(ctx)
	if err != nil {
		return "", 0, err
	}
	defer w.Abort()
	if _, err := sparse.Write(ctx, w, in, fi.Size()); err != nil {
		return "", 0, fmt.Errorf("encoding disk.simg: %w", err)
	}
	return w.Commit(ctx, -1, "")
}

// bootFiles finds the kernel (with its modules) and systemd-boot: in the kernel and bootloader
// role layers when they hold them, so the rootfs need not be stored to read them; otherwise in
// the rootfs, composed into the store for random access.
func bootFiles(ctx context.Context, b *Build) (*initrd.Kernel, *io.SectionReader, func(), error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	layerFile := func(role spec.Role) (*os.File, int64, bool) {
		for _, l := range b.Layers {
			if l.Role == role {
				f, err := b.Env.Cache.Open(l.Digest)
				if err != nil {
					return nil, 0, false
				}
				files = append(files, f)
				return f, l.Size, true
			}
		}
		return nil, 0, false
	}
	if b.Rootfs.Digest == "" {
		kf, ksize, ok1 := layerFile(spec.RoleKernel)
		bf, bsize, ok2 := layerFile(spec.RoleBootloader)
		if ok1 && ok2 {
			kernel, kerr := initrd.Scan(ctx, kf, ksize)
			boot, berr := findRegular(ctx, bf, bsize, bootloaderPath)
			if kerr == nil && berr == nil {
				return kernel, boot, closeAll, nil
			}
		}
		if err := b.ComposeRootfs(ctx); err != nil {
			closeAll()
			return nil, nil, nil, err
		}
	}
	f, err := openBlob(b.Store, b.Rootfs.Digest)
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	files = append(files, f)
	kernel, err := initrd.Scan(ctx, f, b.Rootfs.Size)
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	boot, err := findRegular(ctx, f, b.Rootfs.Size, bootloaderPath)
	if err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("%w: the bootloader layer should provide it (Debian package systemd-boot-efi)", err)
	}
	return kernel, boot, closeAll, nil
}

func openBlob(st *store.Store, d digest.Digest) (*os.File, error) {
	p, err := st.BlobPath(d)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}
