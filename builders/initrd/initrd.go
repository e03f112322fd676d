// Package initrd generates a node's initramfs from its rootfs, never by running tools in the
// image: imgctl-node as /init plus the module closure needed to reach root, as newc cpio.
package initrd

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/kmod"
	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/klauspost/compress/gzip"
)

// DefaultModules reach a root partition on virtio (qemu, most clouds) and NVMe (EC2 Nitro,
// modern metal), mount the squashfs root under an overlay, and mount the ext4 STATE
// partition. Network drivers (ENA included) are optional: see NICModules.
var DefaultModules = []string{"virtio_pci", "virtio_blk", "virtio_scsi", "nvme", "squashfs", "overlay", "ext4"}

// StorageModules drive the disks of common servers and VMs: SATA/AHCI, NVMe, the SCSI disk
// driver that SAS/RAID controllers and virtio-scsi present their disks through, Broadcom/LSI
// MegaRAID, SAS HBAs (mpt3sas, mpi3mr), Microchip SmartPQI, HPE Smart Array, Adaptec, and virtio.
// Pass them as Options.Optional: each kernel has the ones it has (the cloud kernel lacks the
// RAID and HBA drivers).
var StorageModules = []string{"ahci", "nvme", "sd_mod", "megaraid_sas", "mpt3sas", "mpi3mr", "smartpqi", "hpsa", "aacraid", "virtio_blk", "virtio_scsi"}

// NICModules drive the network cards of common servers and VMs: virtio, Intel (e1000, e1000e,
// igb, ixgbe, i40e, ice), Mellanox/NVIDIA ConnectX-4 and later, Broadcom (bnxt_en, tg3, bnx2x),
// and EC2's ENA. Pass them as Options.Optional to boot from the network.
var NICModules = []string{"virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "bnx2x", "tg3", "ena"}

type span struct{ off, size int64 }

// Kernel is what a rootfs holds of one kernel: its release, image and modules.
type Kernel struct {
	Release string
	vmlinuz span
	r       io.ReaderAt
	modRoot string          // e.g. usr/lib/modules/6.1.0-50-cloud-amd64
	files   map[string]span // paths relative to modRoot
	deps    map[string][]string
	byName  map[string]string // module name -> path
	builtin map[string]bool
	// From modules.softdep and modules.alias, where the kernel layer has them: soft
	// dependencies by module name, and the modules each plain alias names.
	softPre, softPost map[string][]string
	aliases           map[string][]string
	// The rootfs's firmware files and symlinks, by path under lib/firmware.
	firmware map[string]span
	fwLinks  map[string]string
}

// Scan indexes the kernel in a rootfs tar (as composed by imgctl: one kernel release, module
// indexes generated). It reads headers and the small index files only.
func Scan(ctx context.Context, rootfs io.ReaderAt, size int64) (*Kernel, error) {
	sr := io.NewSectionReader(rootfs, 0, size)
	tr := tar.NewReader(sr)
	k := &Kernel{r: rootfs, files: map[string]span{}, firmware: map[string]span{}, fwLinks: map[string]string{}}
	vmlinuz := map[string]span{}
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading rootfs: %w", err)
		}
		name := hdr.Name
		if fw, ok := firmwarePath(name); ok {
			switch hdr.Typeflag {
			case tar.TypeSymlink:
				k.fwLinks[fw] = hdr.Linkname
			case tar.TypeReg:
				off, _ := sr.Seek(0, io.SeekCurrent)
				k.firmware[fw] = span{off, hdr.Size}
			}
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		off, _ := sr.Seek(0, io.SeekCurrent)
		if rel, ok := strings.CutPrefix(name, "boot/vmlinuz-"); ok {
			vmlinuz[rel] = span{off, hdr.Size}
			continue
		}
		for _, root := range []string{"usr/lib/modules/", "lib/modules/"} {
			rest, ok := strings.CutPrefix(name, root)
			if !ok {
				continue
			}
			release, p, ok := strings.Cut(rest, "/")
			if !ok {
				break
			}
			if k.Release == "" {
				k.Release, k.modRoot = release, root+release
			} else if release != k.Release {
				return nil, fmt.Errorf("the rootfs holds modules of two kernels (%s and %s): one kernel per image", k.Release, release)
			}
			k.files[p] = span{off, hdr.Size}
		}
	}
	if k.Release == "" {
		return nil, errors.New("the rootfs has no kernel modules (lib/modules/RELEASE/): is there a kernel layer?")
	}
	v, ok := vmlinuz[k.Release]
	if !ok {
		return nil, fmt.Errorf("the rootfs has modules for %s but no boot/vmlinuz-%s", k.Release, k.Release)
	}
	k.vmlinuz = v
	if err := k.readIndexes(); err != nil {
		return nil, err
	}
	return k, nil
}

// firmwarePath returns the path of a rootfs entry under the firmware directory.
func firmwarePath(name string) (string, bool) {
	for _, dir := range []string{"usr/lib/firmware/", "lib/firmware/"} {
		if rel, ok := strings.CutPrefix(name, dir); ok && rel != "" {
			return rel, true
		}
	}
	return "", false
}

// firmwareFile finds the firmware file the kernel loads for name (relative to lib/firmware),
// following symlinks within the firmware directory.
func (k *Kernel) firmwareFile(name string) (span, bool) {
	name = path.Clean(name)
	for range 16 {
		if name == ".." || strings.HasPrefix(name, "../") || path.IsAbs(name) {
			return span{}, false
		}
		if s, ok := k.firmware[name]; ok {
			return s, true
		}
		target, ok := k.fwLinks[name]
		if !ok {
			return span{}, false
		}
		if path.IsAbs(target) {
			if name, ok = firmwarePath(strings.TrimPrefix(path.Clean(target), "/")); !ok {
				return span{}, false
			}
			continue
		}
		name = path.Join(path.Dir(name), target)
	}
	return span{}, false
}

func (k *Kernel) open(p string) (io.Reader, error) {
	s, ok := k.files[p]
	if !ok {
		return nil, fmt.Errorf("%s/%s is missing", k.modRoot, p)
	}
	return io.NewSectionReader(k.r, s.off, s.size), nil
}

// moduleName is how modprobe names the module in file p.
func moduleName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if s, ok := strings.CutSuffix(b, ext); ok {
			b = s
			break
		}
	}
	return strings.ReplaceAll(b, "-", "_")
}

func (k *Kernel) readIndexes() error {
	r, err := k.open("modules.dep")
	if err != nil {
		return fmt.Errorf("kernel %s: %w (the kernel layer should carry generated module indexes)", k.Release, err)
	}
	k.deps, k.byName = map[string][]string{}, map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k.deps[mod] = strings.Fields(deps)
		k.byName[moduleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("kernel %s: modules.dep: %w", k.Release, err)
	}
	k.builtin = map[string]bool{}
	if r, err := k.open("modules.builtin"); err == nil {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				k.builtin[moduleName(l)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("kernel %s: modules.builtin: %w", k.Release, err)
		}
	}
	return k.readSoftdeps()
}

// readSoftdeps reads modules.softdep ("softdep MOD pre: A B post: C", as depmod writes it from
// the modules' softdep= info) and the plain (pattern-free) aliases of modules.alias, which
// soft dependencies name: Debian's ext4 needs "pre: crypto-crc32c". Both files are optional.
func (k *Kernel) readSoftdeps() error {
	k.softPre, k.softPost, k.aliases = map[string][]string{}, map[string][]string{}, map[string][]string{}
	lines := func(name string, fn func(f []string)) error {
		r, err := k.open(name)
		if err != nil {
			return nil // not generated: no soft dependencies
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 3 && !strings.HasPrefix(f[0], "#") {
				fn(f)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("kernel %s: %s: %w", k.Release, name, err)
		}
		return nil
	}
	err := lines("modules.softdep", func(f []string) {
		if f[0] != "softdep" {
			return
		}
		mod, mode := moduleName(f[1]), ""
		for _, w := range f[2:] {
			switch {
			case w == "pre:" || w == "post:":
				mode = w
			case mode == "pre:":
				k.softPre[mod] = append(k.softPre[mod], w)
			case mode == "post:":
				k.softPost[mod] = append(k.softPost[mod], w)
			} // names before any pre: or post: are ignored
		}
	})
	if err != nil {
		return err
	}
	return lines("modules.alias", func(f []string) {
		if f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			k.aliases[f[1]] = append(k.aliases[f[1]], moduleName(f[2]))
		}
	})
}

// Closure returns the module files (relative to the modules directory) that load names, in
// load order: every module after its dependencies. Built-in modules need nothing.
func (k *Kernel) Closure(names []string) ([]string, error) {
	c := closure{k: k, seen: map[string]bool{}}
	for _, n := range names {
		if !c.add(n) {
			return nil, k.noModule(n)
		}
	}
	return c.order, nil
}

// noModule is the error for a required module the kernel has not.
func (k *Kernel) noModule(name string) error {
	return fmt.Errorf("kernel %s has no module %s, neither built in nor in modules.dep: it cannot reach the root device this image needs", k.Release, moduleName(name))
}

// closure collects module files in load order.
type closure struct {
	k     *Kernel
	order []string
	seen  map[string]bool // module files
}

// add includes module name and its dependencies; it reports whether the kernel has the module
// (built in, which needs no file, or in modules.dep).
func (c *closure) add(name string) bool {
	name = moduleName(name)
	if c.k.builtin[name] {
		return true
	}
	p, ok := c.k.byName[name]
	if ok {
		c.visit(p)
	}
	return ok
}

func (c *closure) visit(p string) {
	if c.seen[p] {
		return
	}
	c.seen[p] = true
	name := moduleName(p)
	for _, s := range c.k.softPre[name] {
		c.soft(s)
	}
	for _, d := range c.k.deps[p] {
		c.visit(d)
	}
	c.order = append(c.order, p)
	for _, s := range c.k.softPost[name] {
		c.soft(s)
	}
}

// soft includes a soft dependency: a module name, or an alias naming modules (all of them, as
// modprobe loads them). One the kernel has not, or has built in, is skipped: it is soft.
func (c *closure) soft(name string) {
	if c.add(name) {
		return
	}
	for _, m := range c.k.aliases[name] {
		c.add(m)
	}
}

// Vmlinuz returns the kernel image.
func (k *Kernel) Vmlinuz() *io.SectionReader {
	return io.NewSectionReader(k.r, k.vmlinuz.off, k.vmlinuz.size)
}

// Options configure Write.
type Options struct {
	Agent   string   // path of the static imgctl-node binary, installed as /init
	Modules []string // required module names (a missing one is an error); nil = DefaultModules
	// Optional module names are included, with their dependencies and after the required
	// modules, where the kernel has them (e.g. StorageModules, NICModules); the others are
	// reported in Result.Absent.
	Optional []string
	MTime    time.Time
}

// Result describes a written initrd.
type Result struct {
	Modules []string // module files included, in load order
	// Optional are the optional modules the kernel has (as a file in the initrd or built in),
	// Absent those it has not; both by name as modprobe spells it, once each, in the order given.
	Optional, Absent []string
	// Firmware are the files under lib/firmware the included modules may request (modinfo
	// firmware=) that the rootfs has, included; MissingFirmware those it has not (drivers list
	// every chip revision's file). Both sorted.
	Firmware, MissingFirmware []string
}

// Plan resolves what an initrd for k with opts holds, without writing it: the module files in
// load order, which optional modules the kernel has, and the firmware they request. Write
// writes exactly this plan; a cached initrd's plan is recomputed cheaply (module indexes and
// the modules' .modinfo sections only).
func (k *Kernel) Plan(opts Options) (Result, error) {
	names := opts.Modules
	if names == nil {
		names = DefaultModules
	}
	cl := closure{k: k, seen: map[string]bool{}}
	for _, n := range names {
		if !cl.add(n) {
			return Result{}, k.noModule(n)
		}
	}
	var res Result
	for _, n := range opts.Optional {
		n = moduleName(n)
		if slices.Contains(res.Optional, n) || slices.Contains(res.Absent, n) {
			continue
		}
		if cl.add(n) {
			res.Optional = append(res.Optional, n)
		} else {
			res.Absent = append(res.Absent, n)
		}
	}
	mods := cl.order
	res.Modules = mods
	seen := map[string]bool{}
	for _, m := range mods {
		r, err := k.open(m)
		if err != nil {
			return Result{}, err
		}
		names, err := kmod.Modinfo(m, r, "firmware")
		if err != nil {
			return Result{}, fmt.Errorf("kernel %s: reading which firmware %s/%s requests: %w", k.Release, k.modRoot, m, err)
		}
		for _, fw := range names {
			fw = path.Clean(fw)
			if seen[fw] {
				continue
			}
			seen[fw] = true
			if _, ok := k.firmwareFile(fw); ok {
				res.Firmware = append(res.Firmware, fw)
			} else {
				res.MissingFirmware = append(res.MissingFirmware, fw)
			}
		}
	}
	slices.Sort(res.Firmware)
	slices.Sort(res.MissingFirmware)
	return res, nil
}

// Write writes the gzip-compressed newc initrd for k to w.
func Write(ctx context.Context, w io.Writer, k *Kernel, opts Options) (Result, error) {
	res, err := k.Plan(opts)
	if err != nil {
		return Result{}, err
	}
	mods := res.Modules
	fwSpans := map[string]span{}
	for _, fw := range res.Firmware {
		fwSpans[fw], _ = k.firmwareFile(fw)
	}
	agent, err := localfile.ReadFile(opts.Agent, 512<<20)
	if err != nil {
		return Result{}, fmt.Errorf("node agent (imgctl-node, installed as /init): %w", err)
	}
	if !bytes.HasPrefix(agent, []byte("\x7fELF")) {
		return Result{}, fmt.Errorf("node agent %s is not an ELF executable", opts.Agent)
	}
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return Result{}, err
	}
	c := &newc{w: zw, mtime: opts.MTime.Unix()}
	modDir := "lib/modules/" + k.Release
	var list strings.Builder
	dirs := map[string]bool{}
	var mkdirs func(d string) error
	mkdirs = func(d string) error {
		if d == "." || d == "" || dirs[d] {
			return nil
		}
		if err := mkdirs(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return c.dir(d)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "etc/imgctl", "newroot"} {
		if err := mkdirs(d); err != nil {
			return Result{}, err
		}
	}
	if err := c.entry("dev/console", modeChar|0o600, 0, 5, 1, nil); err != nil {
		return Result{}, err
	}
	if err := c.file("init", 0o755, agent); err != nil {
		return Result{}, err
	}
	files := slices.Clone(mods)
	slices.Sort(files)
	for _, m := range files {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		dst := modDir + "/" + m
		if err := mkdirs(path.Dir(dst)); err != nil {
			return Result{}, err
		}
		r, err := k.open(m)
		if err != nil {
			return Result{}, err
		}
		if err := c.entry(dst, modeReg|0o644, k.files[m].size, 0, 0, r); err != nil {
			return Result{}, err
		}
	}
	for _, fw := range res.Firmware {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		dst := "lib/firmware/" + fw
		if err := mkdirs(path.Dir(dst)); err != nil {
			return Result{}, err
		}
		s := fwSpans[fw]
		if err := c.entry(dst, modeReg|0o644, s.size, 0, 0, io.NewSectionReader(k.r, s.off, s.size)); err != nil {
			return Result{}, err
		}
	}
	for _, m := range mods {
		list.WriteString(modDir + "/" + m + "\n")
	}
	if err := c.file(boot.ModuleListPath, 0o644, []byte(list.String())); err != nil {
		return Result{}, err
	}
	if err := c.trailer(); err != nil {
		return Result{}, err
	}
	if err := zw.Close(); err != nil {
		return Result{}, err
	}
	return res, nil
}
