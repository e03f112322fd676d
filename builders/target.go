package builders

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders/initrd"
	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/spec"
)

// Target writes one kind of artifact (a raw disk, a netboot set, the rootfs tar, …) from a
// build's shared steps. Each target is its own package under builders/ with its own options;
// the steps it asks for are computed once per build and cached across builds by their inputs.
type Target interface {
	Name() string
	Write(ctx context.Context, s Steps) ([]manifest.Artifact, error)
}

// Publisher is implemented by a target that publishes the image somewhere once it is built
// (an AMI): Run calls Publish after the image is stored, with the stored image, and keeps what
// it returns in Result.Published (also with an error: how far it got, if not nil). A failed
// publish leaves the image built (PublishError).
type Publisher interface {
	Publish(ctx context.Context, st *store.Store, img store.Image) (any, error)
}

// PublishError is a Publisher's failure: the image is built and stored, only publishing it
// failed (rerun the publish alone, e.g. imgctl publish ami).
type PublishError struct {
	Target string
	Image  store.Image
	Err    error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("image %s (%s) is built and stored, but target %s could not publish it: %v", e.Image.Config.Version, e.Image.Digest(), e.Target, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// RootfsStorer is implemented by a target that reads or publishes the rootfs tar itself: the
// build then composes the rootfs into the store before any target runs, so a raw or pxe target
// compresses from the stored tar instead of composing it a second time.
type RootfsStorer interface {
	StoresRootfs() bool
}

// Steps are the shared, cached work targets write from. Every method may be called by several
// targets of one build: the first call does the work, the others get its result.
type Steps interface {
	Spec() *spec.NodeImage
	// Epoch is the build's SOURCE_DATE_EPOCH: every timestamp a target writes.
	Epoch() int64
	Store() *store.Store
	Logger() *slog.Logger
	// Rootfs is the composed rootfs: its digest (the image's identity, e.g. the disk GUIDs'
	// seed), size and entries; the tar itself need not be stored.
	Rootfs(ctx context.Context) (manifest.Rootfs, error)
	// StoredRootfs is Rootfs with the tar in the store, for a target that publishes or reads it.
	StoredRootfs(ctx context.Context) (manifest.Rootfs, error)
	// Kernel indexes the kernel and its modules (from the kernel layer, else the rootfs).
	Kernel(ctx context.Context) (*initrd.Kernel, error)
	// Vmlinuz is the kernel image, stored (once per build, whichever targets publish it).
	Vmlinuz(ctx context.Context) (Blob, error)
	// Bootloader is systemd-boot's EFI binary (from the bootloader layer, else the rootfs).
	Bootloader(ctx context.Context) (*io.SectionReader, error)
	// Initrd is the node agent as /init plus modules, stored; cached by kernel, agent, module
	// set and epoch.
	Initrd(ctx context.Context, o InitrdOptions) (Initrd, error)
	// RootSquashfs is the rootfs as a squashfs image with its dm-verity hash area appended,
	// stored; cached by rootfs digest, compressor and level, so every target of a build (and a
	// rebuild) compresses once.
	RootSquashfs(ctx context.Context, o SquashfsOptions) (RootBlob, error)
}

// Blob is a stored artifact's content.
type Blob struct {
	Digest digest.Digest
	Size   int64
}

// RootBlob is the stored root: the squashfs (padded to 4 KiB) followed by its dm-verity hash
// area (package images/boot/verity), one blob that ROOT-A holds and a netbooted node loop-mounts
// (squashfs ignores what follows its data).
type RootBlob struct {
	Blob
	Verity Verity
}

// Verity are a root's dm-verity parameters.
type Verity struct {
	RootHash string // the root hash, 64 lower-case hex
	Offset   int64  // where the hash area starts: the squashfs's size
}

// InitrdOptions choose an initrd's module set beyond initrd.DefaultModules.
type InitrdOptions struct {
	// Modules must all be in the kernel (built in or as modules): nil = initrd.DefaultModules.
	Modules []string
	// Optional are included, with their dependencies, where the kernel has them.
	Optional []string
}

func (o InitrdOptions) key() string {
	req := o.Modules
	if req == nil {
		req = initrd.DefaultModules
	}
	req, opt := slices.Clone(req), slices.Clone(o.Optional)
	slices.Sort(req)
	slices.Sort(opt)
	return "required=" + strings.Join(req, ",") + "\noptional=" + strings.Join(opt, ",")
}

// Initrd is a stored initrd.
type Initrd struct {
	Blob
	// Modules are the module files it loads, in order.
	Modules []string
	// Included and Absent split InitrdOptions.Optional by whether the kernel has them.
	Included, Absent []string
	// Firmware are the firmware files the modules request that the image has, included.
	Firmware []string
}

// SquashfsOptions choose the root squashfs's compression.
type SquashfsOptions struct {
	Compression string // one of squashfs.Compressors(); "" = zstd
	// Level 0 picks a fast level for zstd (3: compression is the build's hot spot, and level 3
	// is within a few percent of level 15's size on a node rootfs), else the compressor's
	// default.
	Level int
}

// Normalize fills in the defaults and checks the compressor and its level.
func (o SquashfsOptions) Normalize() (SquashfsOptions, error) {
	if o.Compression == "" {
		o.Compression = "zstd"
	}
	if !slices.Contains(squashfs.Compressors(), o.Compression) {
		return o, fmt.Errorf("unknown compressor %q (supported: %s)", o.Compression, strings.Join(squashfs.Compressors(), ", "))
	}
	if err := squashfs.CheckLevel(o.Compression, o.Level); err != nil {
		return o, err
	}
	if o.Level == 0 && o.Compression == "zstd" {
		o.Level = 3
	}
	return o, nil
}

// BootInitrd is the module set of the initrd every boot target writes: the root's modules,
// plus the storage and network drivers the kernel has. Raw and pxe share it, so an image has
// one initrd.img, and a disk node's initrd can reach the network too.
var BootInitrd = InitrdOptions{
	// loop: the network root is a squashfs file in RAM, mounted through a loop device (a
	// module in Debian's kernels: CONFIG_BLK_DEV_LOOP=m). dm-mod, dm-verity: the init maps a
	// root with a verity hash tree through device-mapper before mounting it (both modules in
	// Debian's kernels, dm-verity pulling dm-bufio; sha256 is built in).
	Modules:  append(append([]string{}, initrd.DefaultModules...), "loop", "dm-mod", "dm-verity"),
	Optional: append(append([]string{}, initrd.StorageModules...), initrd.NICModules...),
}

// Architecture is the architecture of every image the builders write, as GOARCH names it:
// Debian's amd64 packages, linux/amd64 OCI sources, an x86-64 root partition type and
// BOOTX64.EFI. The image's config and manifest record it, so a node refuses an image for
// another architecture.
const Architecture = "amd64"

// Names of the artifacts every boot target publishes (raw and pxe share them).
const (
	KernelArtifactName = manifest.KernelArtifact
	InitrdArtifactName = manifest.InitrdArtifact
)

// RootArtifactName is the root's artifact name (raw and pxe publish it).
const RootArtifactName = manifest.RootSquashfsArtifact

// RootAnnotations describe the root blob on every artifact that boots it (rootfs.squashfs,
// disk.simg, boot.ipxe): its digest and size and its verity parameters.
func RootAnnotations(root RootBlob) map[string]string {
	return map[string]string{
		manifest.AnnotationRootDigest:         string(root.Digest),
		manifest.AnnotationRootSize:           fmt.Sprint(root.Size),
		manifest.AnnotationRootVerityRootHash: root.Verity.RootHash,
		manifest.AnnotationRootVerityOffset:   fmt.Sprint(root.Verity.Offset),
	}
}

// RootArtifact is the rootfs.squashfs artifact raw and pxe publish: the root blob, its
// compressor, the spec's kernel command line (cmdline; a node adds its slot's or network's
// parameters) and RootAnnotations. A disk image carries its root for updates this way, and
// imgctl serve can serve it.
func RootArtifact(root RootBlob, compressor string, cmdline []string) manifest.Artifact {
	ann := RootAnnotations(root)
	ann[manifest.AnnotationRootCompressor] = compressor
	ann[manifest.AnnotationKernelCmdline] = strings.Join(cmdline, " ")
	return manifest.Artifact{Name: RootArtifactName, MediaType: manifest.SquashfsMediaType, Digest: root.Digest, Size: root.Size, Annotations: ann}
}

// KernelArtifact is the vmlinuz artifact every boot target publishes.
func KernelArtifact(release string, b Blob) manifest.Artifact {
	return manifest.Artifact{Name: KernelArtifactName, MediaType: manifest.KernelMediaType, Digest: b.Digest, Size: b.Size,
		Annotations: map[string]string{manifest.AnnotationKernelRelease: release}}
}

// InitrdArtifact is the initrd.img artifact every boot target publishes.
func InitrdArtifact(ird Initrd) manifest.Artifact {
	return manifest.Artifact{Name: InitrdArtifactName, MediaType: manifest.InitrdMediaType, Digest: ird.Digest, Size: ird.Size,
		Annotations: InitrdAnnotations(ird)}
}

// InitrdAnnotations record which optional drivers an initrd includes.
func InitrdAnnotations(ird Initrd) map[string]string {
	return map[string]string{
		manifest.AnnotationInitrdDrivers: strings.Join(ird.Included, ","),
	}
}

// Intersect returns the elements of a that are also in b, in a's order.
func Intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
