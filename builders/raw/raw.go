// Package raw is the raw disk target: disk.simg (a sparse GPT disk image with an ESP holding
// systemd-boot and slot A's kernel and initrd, ROOT-A with the root squashfs and its dm-verity
// hash area, an empty ROOT-B and an unformatted STATE partition), plus the kernel, the initrd
// and the root (rootfs.squashfs, what a node's update writes into its other slot) as artifacts
// of their own.
package raw

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/disk"
	bootc "github.com/imgctl/imgctl/images/boot" // not boot: the bootloader variable below
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/progress"
)

// Name is the target's name on the command line and in specs.
const Name = "raw"

// Options configure the raw disk target.
type Options struct {
	DiskSize int64 // 0 = disk.DefaultDiskSize
	RootSize int64 // size of ROOT-A and ROOT-B; 0 = disk.DefaultRootSize
	Squashfs builders.SquashfsOptions
}

// Target writes the raw disk.
type Target struct{ Options Options }

// New returns the raw target with o.
func New(o Options) *Target { return &Target{Options: o} }

// Name implements builders.Target.
func (*Target) Name() string { return Name }

// Write implements builders.Target.
func (t *Target) Write(ctx context.Context, s builders.Steps) ([]manifest.Artifact, error) {
	o := t.Options
	sqOpts, err := o.Squashfs.Normalize()
	if err != nil {
		return nil, err
	}
	// The initrd first: it fails fast when the node agent is missing or the kernel lacks a
	// module root needs.
	ird, err := s.Initrd(ctx, builders.BootInitrd)
	if err != nil {
		return nil, err
	}
	kernel, err := s.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	boot, err := s.Bootloader(ctx)
	if err != nil {
		return nil, err
	}
	root, err := s.RootSquashfs(ctx, sqOpts)
	if err != nil {
		return nil, err
	}
	st := s.Store()
	rootf, err := openBlob(st, root.Digest)
	if err != nil {
		return nil, err
	}
	defer rootf.Close()
	irdBytes, err := readBlob(ctx, st, ird.Blob)
	if err != nil {
		return nil, err
	}
	rootfs, err := s.Rootfs(ctx) // known since RootSquashfs: the disk's identity
	if err != nil {
		return nil, err
	}

	work, err := st.TempDir("raw-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	mtime := time.Unix(s.Epoch(), 0).UTC()
	seed := []byte(rootfs.Digest)
	dopts := disk.Options{DiskSize: o.DiskSize, RootSize: o.RootSize, Seed: seed, MTime: mtime, Logger: s.Logger()}
	layout, err := disk.Plan(dopts, root.Size)
	if err != nil {
		return nil, err
	}
	rootA, _ := layout.Find(bootc.LabelRootA)
	state, _ := layout.Find(bootc.LabelState)
	specCmdline := s.Spec().Spec.Kernel.Cmdline
	cmdline := bootc.SlotCmdline(specCmdline, bootc.SlotParams{
		Root:           bootc.PartUUIDDevice(rootA.GUID),
		State:          bootc.PartUUIDDevice(state.GUID),
		RootDigest:     string(root.Digest),
		VerityRootHash: root.Verity.RootHash,
		VerityOffset:   root.Verity.Offset,
	})
	// The entry's version is the build's SOURCE_DATE_EPOCH, so systemd-boot prefers the newer
	// image and falls back to the other slot when the newer one has used up its boot tries.
	entry := bootc.Entry{Slot: bootc.SlotA, Version: s.Epoch(), Cmdline: cmdline}
	slotDir := bootc.SlotDir(bootc.SlotA) + "/"
	esp := []disk.File{
		sectionFile("EFI/BOOT/BOOTX64.EFI", boot),
		sectionFile("EFI/systemd/systemd-bootx64.efi", boot),
		bytesFile("loader/loader.conf", []byte("timeout 0\neditor no\nauto-entries no\nauto-firmware no\n")),
		bytesFile(path.Join(bootc.EntriesDir, bootc.EntryFile(bootc.SlotA, bootc.BootTries, 0, true)), entry.Marshal()),
		sectionFile(slotDir+bootc.SlotKernel, kernel.Vmlinuz()),
		bytesFile(slotDir+bootc.SlotInitrd, irdBytes),
	}
	step := progress.Start(ctx, "write disk")
	diskPath := filepath.Join(work, "disk.raw")
	err = disk.Write(ctx, diskPath, layout, esp, rootf, root.Size, dopts)
	step.Done(err)
	if err != nil {
		return nil, fmt.Errorf("writing disk: %w", err)
	}
	// The store keeps the disk as a sparse image: hashing gigabytes of zeros would cost more
	// than the rest of the build.
	dd, dsize, err := writeSparse(ctx, st, diskPath)
	if err != nil {
		return nil, err
	}
	kblob, err := s.Vmlinuz(ctx)
	if err != nil {
		return nil, err
	}
	parts, err := json.Marshal(layout.Partitions)
	if err != nil {
		return nil, err
	}
	diskAnn := builders.RootAnnotations(root)
	diskAnn[manifest.AnnotationDiskSize] = fmt.Sprint(layout.DiskSize)
	diskAnn[manifest.AnnotationDiskPartitions] = string(parts)
	diskAnn[manifest.AnnotationDiskGUID] = layout.DiskGUID
	diskAnn[manifest.AnnotationRootCompressor] = sqOpts.Compression
	diskAnn[manifest.AnnotationKernelCmdline] = strings.Join(cmdline, " ")
	return []manifest.Artifact{
		{Name: "disk.simg", MediaType: manifest.DiskSparseMediaType, Digest: dd, Size: dsize, Annotations: diskAnn},
		builders.KernelArtifact(kernel.Release, kblob),
		builders.InitrdArtifact(ird),
		// The root for updates (and for imgctl serve): the bytes ROOT-A holds.
		builders.RootArtifact(root, sqOpts.Compression, specCmdline),
	}, nil
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

func openBlob(st *store.Store, d digest.Digest) (*os.File, error) {
	p, err := st.BlobPath(d)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// readBlob reads a small stored blob (an initrd) into memory, verified.
func readBlob(ctx context.Context, st *store.Store, b builders.Blob) ([]byte, error) {
	rc, err := st.OpenBlob(ctx, b.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", b.Digest, err)
	}
	return data, nil
}
