package builders

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders/initrd"
	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/builders/squashfs/blockcache"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// Cache key versions: bump one when what its step writes changes for the same inputs.
const (
	initrdVersion   = "initrd/2"   // 2: soft dependencies and firmware
	squashfsVersion = "squashfs/4" // 2: the volatile layers' files and image.json stored last; 3: dm-verity hash area appended; 4: the kernel's files in a late group, late groups 4 KiB-aligned
)

// bootloaderPath is where the bootloader layer (Debian's systemd-boot-efi) puts systemd-boot.
const bootloaderPath = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// layerFile opens the role layer's tar in the cache, if the build has that role.
func (b *Build) layerFile(role spec.Role) (*os.File, int64, digest.Digest, bool) {
	for _, l := range b.layers {
		if l.Role == role {
			f, err := b.opts.Env.Cache.Open(l.Digest)
			if err != nil {
				return nil, 0, "", false
			}
			b.files = append(b.files, f)
			return f, l.Size, l.Digest, true
		}
	}
	return nil, 0, "", false
}

// rootfsFile opens the stored rootfs, composing it first if needed. Call with b.mu held.
func (b *Build) rootfsFile(ctx context.Context) (*os.File, int64, error) {
	r, err := b.rootfsLocked(ctx, true, nil)
	if err != nil {
		return nil, 0, err
	}
	p, err := b.opts.Store.BlobPath(r.Digest)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	b.files = append(b.files, f)
	return f, r.Size, nil
}

// kernelSource identifies where the kernel was read from, for the initrd cache key.
func (b *Build) kernelLocked(ctx context.Context) (*initrd.Kernel, string, error) {
	if b.kernel != nil {
		return b.kernel, b.kernelFrom, nil
	}
	// The kernel layer holds the kernel and its modules: no need to compose the rootfs.
	if f, size, d, ok := b.layerFile(spec.RoleKernel); ok {
		if k, err := initrd.Scan(ctx, f, size); err == nil {
			b.kernel, b.kernelFrom = k, "layer "+string(d)
			return k, b.kernelFrom, nil
		}
	}
	f, size, err := b.rootfsFile(ctx)
	if err != nil {
		return nil, "", err
	}
	k, err := initrd.Scan(ctx, f, size)
	if err != nil {
		return nil, "", err
	}
	b.kernel, b.kernelFrom = k, "rootfs "+string(b.rootfs.Digest)
	return k, b.kernelFrom, nil
}

// Kernel implements Steps.
func (b *Build) Kernel(ctx context.Context) (*initrd.Kernel, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k, _, err := b.kernelLocked(ctx)
	return k, err
}

// Vmlinuz implements Steps.
func (b *Build) Vmlinuz(ctx context.Context) (Blob, error) {
	k, err := b.Kernel(ctx)
	if err != nil {
		return Blob{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kernelBlob.Digest != "" {
		return b.kernelBlob, nil
	}
	d, size, err := b.opts.Store.WriteBlob(ctx, k.Vmlinuz(), -1, "")
	if err != nil {
		return Blob{}, err
	}
	b.kernelBlob = Blob{Digest: d, Size: size}
	return b.kernelBlob, nil
}

// Bootloader implements Steps.
func (b *Build) Bootloader(ctx context.Context) (*io.SectionReader, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bootloader != nil {
		return b.bootloader, nil
	}
	if f, size, _, ok := b.layerFile(spec.RoleBootloader); ok {
		if s, err := findRegular(ctx, f, size, bootloaderPath); err == nil {
			b.bootloader = s
			return s, nil
		}
	}
	f, size, err := b.rootfsFile(ctx)
	if err != nil {
		return nil, err
	}
	s, err := findRegular(ctx, f, size, bootloaderPath)
	if err != nil {
		return nil, fmt.Errorf("%w: the bootloader layer should provide it (Debian package systemd-boot-efi)", err)
	}
	b.bootloader = s
	return s, nil
}

// Initrd implements Steps.
func (b *Build) Initrd(ctx context.Context, o InitrdOptions) (Initrd, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	agent := b.opts.Env.NodeAgent
	if agent == "" {
		return Initrd{}, errors.New("the initrd needs the imgctl-node binary as /init (--node-agent PATH; make build puts it in bin/)")
	}
	k, from, err := b.kernelLocked(ctx)
	if err != nil {
		return Initrd{}, err
	}
	iopts := initrd.Options{Agent: agent, Modules: o.Modules, Optional: o.Optional, MTime: b.mtime()}
	plan, err := k.Plan(iopts)
	if err != nil {
		return Initrd{}, err
	}
	out := Initrd{Modules: plan.Modules, Included: plan.Optional, Absent: plan.Absent, Firmware: plan.Firmware}
	if b.agent == "" {
		if b.agent, err = source.HashFile(ctx, agent); err != nil {
			return Initrd{}, fmt.Errorf("node agent (imgctl-node, installed as /init): %w", err)
		}
	}
	key := strings.Join([]string{initrdVersion, from, k.Release, "agent " + string(b.agent), o.key(), fmt.Sprint(b.epoch)}, "\n")
	if blob, ok := b.initrds[key]; ok {
		out.Blob = blob.Blob
		return out, nil
	}
	if blob, ok := b.cachedBlob("initrd", key); ok {
		out.Blob = blob
	} else {
		start := time.Now()
		step := progress.Start(ctx, "write initrd")
		var ird bytes.Buffer
		_, err := initrd.Write(ctx, &ird, k, iopts)
		if err == nil {
			out.Digest, out.Size, err = b.opts.Store.WriteBlob(ctx, bytes.NewReader(ird.Bytes()), -1, "")
		}
		if err == nil {
			err = b.opts.Env.Cache.SetRef("initrd", key, out.Digest)
		}
		step.Add(int64(ird.Len()), int64(len(out.Modules)))
		step.Done(err)
		b.timed("initrd", start)
		if err != nil {
			return Initrd{}, &StepError{"write initrd", err}
		}
	}
	if b.initrds == nil {
		b.initrds = map[string]Initrd{}
	}
	b.initrds[key] = out
	return out, nil
}

// cachedBlob finds the blob a step stored under key in an earlier build, if it is still in
// the store (and marks it in use, so a concurrent gc spares it).
func (b *Build) cachedBlob(kind, key string) (Blob, bool) {
	d, err := b.opts.Env.Cache.Ref(kind, key)
	if err != nil || b.opts.Store.TouchBlob(d) != nil {
		return Blob{}, false
	}
	p, err := b.opts.Store.BlobPath(d)
	if err != nil {
		return Blob{}, false
	}
	fi, err := os.Stat(p)
	if err != nil {
		return Blob{}, false
	}
	return Blob{Digest: d, Size: fi.Size()}, true
}

// RootSquashfs implements Steps. Unless the rootfs is in the store already, it is composed
// straight into the squashfs writer (two cores, two jobs, one pass over the layers) and only
// hashed: a build that needs the tar itself asks for Rootfs. The dm-verity hash area is
// appended to the squashfs in the same file before it is stored.
func (b *Build) RootSquashfs(ctx context.Context, o SquashfsOptions) (RootBlob, error) {
	o, err := o.Normalize()
	if err != nil {
		return RootBlob{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if blob, ok := b.squashfs[o]; ok {
		return blob, nil
	}
	key := func(rootfs digest.Digest) string {
		return strings.Join([]string{squashfsVersion, string(rootfs), o.Compression, fmt.Sprint(o.Level), fmt.Sprint(b.epoch), lateKey(b.layers)}, "\n")
	}
	if b.rootfs.Digest == "" {
		b.findRootfs(ctx, false)
	}
	if b.rootfs.Digest != "" {
		if blob, ok := b.cachedBlob("squashfs", key(b.rootfs.Digest)); ok {
			root, err := b.storedRoot(ctx, blob)
			if err != nil {
				return RootBlob{}, err
			}
			b.remember(o, root)
			return root, nil
		}
	}

	work, err := b.opts.Store.TempDir("squashfs-")
	if err != nil {
		return RootBlob{}, err
	}
	defer os.RemoveAll(work)
	sqPath := filepath.Join(work, "rootfs.squashfs")
	sq, err := os.Create(sqPath)
	if err != nil {
		return RootBlob{}, err
	}
	defer sq.Close()
	late, err := b.lateFilesLocked(ctx)
	if err != nil {
		return RootBlob{}, &StepError{"compress root squashfs", err}
	}
	sqOpts := squashfs.Options{Compression: o.Compression, Level: o.Level, MTime: b.epoch, Logger: b.log,
		Late: func(name string) int { return lateGroupOf(late, name) }, TempDir: work}
	// Compressed blocks of earlier builds: a rebuild compresses only the blocks that changed.
	blocks, err := blockcache.Open(filepath.Join(b.opts.Env.Cache.Dir(), "squashfs-blocks"), blockcache.Options{Logger: b.log})
	if err != nil {
		b.log.Warn("squashfs block cache unavailable, compressing every block", "err", err)
	} else {
		sqOpts.Blocks = blocks
	}
	phaseName := "squashfs"
	if !b.rootfsStored {
		phaseName = "compose+squashfs" // one pass does both
	}
	defer b.timed(phaseName, time.Now())
	var sqRes squashfs.Result
	if b.rootfsStored {
		f, size, ferr := b.rootfsFile(ctx)
		if ferr != nil {
			return RootBlob{}, ferr
		}
		// squashfs.Write reports its own progress step ("compress squashfs").
		sqRes, err = squashfs.Write(ctx, sq, io.NewSectionReader(f, 0, size), sqOpts)
	} else {
		// Compose (hashed, not stored) through a pipe into the squashfs writer.
		pr, pw := io.Pipe()
		composed := make(chan error, 1)
		go func() {
			_, err := b.rootfsLocked(ctx, false, pw)
			pw.CloseWithError(err)
			composed <- err
		}()
		sqRes, err = squashfs.Write(ctx, sq, pr, sqOpts)
		if err != nil {
			pr.CloseWithError(err) // unblock compose
		} else {
			_, _ = io.Copy(io.Discard, pr) // the tar's end padding: let compose finish
		}
		if cerr := <-composed; cerr != nil {
			err = cerr // the root cause: the squashfs writer saw only a broken stream
		}
	}
	if blocks != nil {
		if err != nil {
			blocks.Discard()
		} else if cerr := blocks.Close(); cerr != nil {
			b.log.Warn("squashfs block cache", "err", cerr)
		}
	}
	if err != nil {
		var se *StepError
		if errors.As(err, &se) {
			return RootBlob{}, err
		}
		return RootBlob{}, &StepError{"compress root squashfs", fmt.Errorf("writing squashfs: %w", err)}
	}
	v, err := appendVerity(ctx, sq, sqRes.Size)
	if err != nil {
		return RootBlob{}, &StepError{"compress root squashfs", err}
	}
	if err := sq.Sync(); err != nil {
		return RootBlob{}, err
	}
	d, size, err := b.opts.Store.AddFile(ctx, sqPath)
	if want := sqRes.Size + verity.HashAreaSize(uint64(sqRes.Size/verity.BlockSize)); err == nil && size != want {
		err = fmt.Errorf("internal: squashfs writer reported %d bytes, with the hash area %d, file has %d", sqRes.Size, want, size)
	}
	if err == nil {
		err = b.opts.Env.Cache.SetRef("squashfs", key(b.rootfs.Digest), d)
	}
	if err != nil {
		return RootBlob{}, err
	}
	root := RootBlob{Blob: Blob{Digest: d, Size: size}, Verity: v}
	b.remember(o, root)
	return root, nil
}

// appendVerity builds the dm-verity tree of the squashfs's first size bytes (a multiple of 4
// KiB: the writer pads it) and writes its hash area after them.
func appendVerity(ctx context.Context, f *os.File, size int64) (Verity, error) {
	step := progress.Start(ctx, "hash root (dm-verity)")
	tree, err := verity.Build(ctx, io.NewSectionReader(f, 0, size), size)
	if err == nil {
		_, err = f.WriteAt(tree.HashArea(), size)
	}
	step.Done(err)
	if err != nil {
		return Verity{}, fmt.Errorf("dm-verity hash area: %w", err)
	}
	return Verity{RootHash: tree.RootHashHex(), Offset: size}, nil
}

// storedRoot reads a cached root blob's verity parameters from its hash area (a few MB of a
// root, checked against its own top block; the store verified the blob's digest).
func (b *Build) storedRoot(ctx context.Context, blob Blob) (RootBlob, error) {
	p, err := b.opts.Store.BlobPath(blob.Digest)
	if err != nil {
		return RootBlob{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return RootBlob{}, err
	}
	defer f.Close()
	a, err := verity.ReadAppended(f, blob.Size)
	if err != nil {
		return RootBlob{}, fmt.Errorf("cached root squashfs %s: %w", blob.Digest, err)
	}
	return RootBlob{Blob: blob, Verity: Verity{RootHash: hex.EncodeToString(a.RootHash[:]), Offset: a.DataSize}}, nil
}

func (b *Build) remember(o SquashfsOptions, root RootBlob) {
	if b.squashfs == nil {
		b.squashfs = map[SquashfsOptions]RootBlob{}
	}
	b.squashfs[o] = root
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
