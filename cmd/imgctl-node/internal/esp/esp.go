// Package esp is the node's access to its EFI system partition during A/B updates: find it
// (the partition labelled ESP on the disk that holds the running root), mount it, write a
// slot's kernel, initrd and image.json crash-safely, and read, write, bless and remove the
// slots' Boot Loader Specification entries (their names and text come from images/boot).
//
// Every write is a temp file in the target's directory + fsync + rename + directory fsync, so a
// power cut leaves the old file or the new one, never a mix; a write that cannot fit is refused
// before it starts. The mount is separate (Mount) so that everything else works on any
// directory.
package esp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/atomicfile"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/images/boot"
)

// MountPoint is where the update agent and bless mount the ESP.
const MountPoint = "/run/imgctl/esp"

// SlotImageFile is the sidecar in boot.SlotDir(slot) naming the image the slot holds. Slot A of a
// freshly written disk has none: its identity is imgctl.root-digest on its command line.
const SlotImageFile = "image.json"

// FreeMargin is the room WriteFile leaves free beyond the file's size: FAT allocates in
// clusters and needs room for directory entries.
const FreeMargin = 1 << 20

// tempPrefix starts every temp file's name: CleanTemps finds leftovers by it. A temp name never
// ends in .conf, so systemd-boot never reads a half-written entry.
const tempPrefix = ".tmp-"

// ESP is a mounted EFI system partition, or any directory laid out like one.
type ESP struct {
	Dir string
	// statfs returns the bytes free for an unprivileged writer under dir.
	statfs  func(dir string) (uint64, error)
	unmount func() error
}

// New is the ESP mounted (or laid out, in tests) at dir.
func New(dir string) *ESP { return &ESP{Dir: dir, statfs: freeBytes} }

func freeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Mount mounts the FAT file system on dev read-write at dir (created if missing) and returns
// it; Close unmounts it. A dir that already has dev mounted (a previous run that died) is
// mounted over, and Close unmounts the top one.
func Mount(ctx context.Context, dev, dir string) (*ESP, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mount ESP: %w", err)
	}
	// nodev,nosuid,noexec: nothing on the ESP runs on the node; umask keeps it root's. No
	// charset options: the names written are ASCII, and each option may need an nls module.
	flags := uintptr(unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if err := unix.Mount(dev, dir, "vfat", flags, "umask=0077"); err != nil {
		return nil, fmt.Errorf("mount ESP %s at %s (vfat): %w", dev, dir, err)
	}
	e := New(dir)
	e.unmount = func() error {
		if err := unix.Unmount(dir, 0); err != nil {
			return fmt.Errorf("unmount ESP at %s: %w", dir, err)
		}
		return nil
	}
	return e, nil
}

// Close syncs the file system and unmounts the ESP if Mount mounted it.
func (e *ESP) Close() error {
	if e.unmount == nil {
		return nil
	}
	u := e.unmount
	e.unmount = nil
	return u()
}

// ErrNotAB is Locate's error for a boot that is not from an A/B disk (a network root, a root
// partition that is not ROOT-A or ROOT-B): there is nothing to update or bless.
var ErrNotAB = errors.New("not an A/B disk node")

// Location is where the running slot lives.
type Location struct {
	Slot string       // boot.SlotA or boot.SlotB: the running root partition's label
	Root blockdev.Dev // the running root partition (ROOT-A or ROOT-B)
	ESP  blockdev.Dev // the partition labelled ESP on the same disk
}

// Locate finds the running slot and its ESP: root is the device on the kernel command line
// (imgctl.root=, e.g. PARTUUID=…), a partition labelled ROOT-A or ROOT-B; the ESP is the one
// partition labelled ESP on the same disk.
func Locate(sys blockdev.Sys, root cmdline.Device) (Location, error) {
	if root.IsZero() {
		return Location{}, fmt.Errorf("%w: no imgctl.root= device on the kernel command line", ErrNotAB)
	}
	devs, err := sys.Scan()
	if err != nil {
		return Location{}, fmt.Errorf("locate ESP: %w", err)
	}
	sys.FillFromGPT(devs) // kernels before 6.10 put no PARTUUID in the uevent
	m := blockdev.Match(devs, root)
	if len(m) != 1 {
		return Location{}, fmt.Errorf("root %s matches %d block devices (expected one partition)", root, len(m))
	}
	r := m[0]
	var slot string
	for _, s := range []string{boot.SlotA, boot.SlotB} {
		if r.PartName == boot.SlotLabel(s) {
			slot = s
		}
	}
	if slot == "" {
		return Location{}, fmt.Errorf("%w: root %s is %s labelled %q (expected %s or %s)",
			ErrNotAB, root, r.Name, r.PartName, boot.LabelRootA, boot.LabelRootB)
	}
	var esps []blockdev.Dev
	for _, d := range devs {
		if d.Type == "partition" && d.Disk == r.Disk && d.PartName == boot.LabelESP {
			esps = append(esps, d)
		}
	}
	if len(esps) != 1 {
		return Location{}, fmt.Errorf("disk %s holding root %s has %d partitions labelled %s (expected one)", r.Disk, r.Name, len(esps), boot.LabelESP)
	}
	return Location{Slot: slot, Root: r, ESP: esps[0]}, nil
}

// relRE is what WriteFile accepts as a path: relative, slash-separated, plain names.
var relRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$`)

func (e *ESP) path(rel string) (string, error) {
	if !relRE.MatchString(rel) || path.Clean(rel) != rel || strings.Contains(rel, "..") {
		return "", fmt.Errorf("ESP path %q: expected a relative path of plain names", rel)
	}
	return filepath.Join(e.Dir, filepath.FromSlash(rel)), nil
}

// WriteFile replaces rel (relative to the ESP's root, e.g. imgctl/b/vmlinuz) with exactly size
// bytes from r: a temp file in the same directory, fsync, rename, directory fsync. It refuses
// up front, writing nothing, when the file system has less than size + FreeMargin free; on any
// error (short input, a full disk, ctx cancelled) the temp file is removed and rel is left as
// it was.
func (e *ESP) WriteFile(ctx context.Context, rel string, r io.Reader, size int64) (err error) {
	full, err := e.path(rel)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("write %s on the ESP: negative size %d", rel, size)
	}
	dir := filepath.Dir(full)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	free, err := e.statfs(dir)
	if err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	if need := uint64(size) + FreeMargin; free < need {
		return fmt.Errorf("ESP at %s is full: %d bytes free, %s needs %d (%d + %d margin); nothing written",
			e.Dir, free, rel, need, size, FreeMargin)
	}
	f, err := os.CreateTemp(dir, tempPrefix+filepath.Base(full)+"-*")
	if err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, io.LimitReader(ctxReader{ctx, r}, size))
	if err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	if n != size {
		return fmt.Errorf("write %s on the ESP: input ended after %d of %d bytes", rel, n, size)
	}
	var probe [1]byte
	if m, _ := r.Read(probe[:]); m > 0 {
		return fmt.Errorf("write %s on the ESP: input is longer than %d bytes", rel, size)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s on the ESP: fsync: %w", rel, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	if err := os.Rename(tmp, full); err != nil {
		return fmt.Errorf("write %s on the ESP: %w", rel, err)
	}
	return atomicfile.SyncDir(dir)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// CleanTemps removes temp files a crashed write left in the slots' directories and in the
// loader entries directory.
func (e *ESP) CleanTemps() error {
	var errs []error
	for _, rel := range []string{boot.EntriesDir, boot.SlotDir(boot.SlotA), boot.SlotDir(boot.SlotB)} {
		dir := filepath.Join(e.Dir, filepath.FromSlash(rel))
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, de := range ents {
			if strings.HasPrefix(de.Name(), tempPrefix) {
				if err := os.Remove(filepath.Join(dir, de.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Entry is one slot's loader entry file on the ESP.
type Entry struct {
	File string // name in boot.EntriesDir
	boot.EntryName
}

// Entries lists the slots' entries (file names boot.ParseEntryFile accepts), sorted by name;
// other files are ignored. No entries directory: none.
func (e *ESP) Entries() ([]Entry, error) {
	dir := filepath.Join(e.Dir, filepath.FromSlash(boot.EntriesDir))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list loader entries: %w", err)
	}
	var out []Entry
	for _, de := range ents {
		if n, ok := boot.ParseEntryFile(de.Name()); ok && de.Type().IsRegular() {
			out = append(out, Entry{File: de.Name(), EntryName: n})
		}
	}
	return out, nil
}

// SlotEntries lists slot's entries (normally at most one).
func (e *ESP) SlotEntries(slot string) ([]Entry, error) {
	all, err := e.Entries()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(x Entry) bool { return x.Slot != slot }), nil
}

// ReadEntry parses the entry file name (in boot.EntriesDir).
func (e *ESP) ReadEntry(name string) (boot.Entry, error) {
	p := filepath.Join(e.Dir, filepath.FromSlash(boot.EntriesDir), name)
	data, err := os.ReadFile(p)
	if err != nil {
		return boot.Entry{}, fmt.Errorf("read loader entry: %w", err)
	}
	ent, err := boot.ParseEntry(data)
	if err != nil {
		return boot.Entry{}, fmt.Errorf("%s: %w", p, err)
	}
	return ent, nil
}

// MaxVersion is the highest version of the slots' entries (0 when there is none): a new
// slot's entry gets MaxVersion()+1 so that systemd-boot tries it first.
func (e *ESP) MaxVersion() (int64, error) {
	ents, err := e.Entries()
	if err != nil {
		return 0, err
	}
	var v int64
	for _, x := range ents {
		ent, err := e.ReadEntry(x.File)
		if err != nil {
			return 0, err
		}
		v = max(v, ent.Version)
	}
	return v, nil
}

// RemoveSlotEntries removes every entry of slot, counting or blessed, so that systemd-boot
// never boots the slot while it is being rewritten.
func (e *ESP) RemoveSlotEntries(slot string) error {
	ents, err := e.SlotEntries(slot)
	if err != nil {
		return err
	}
	dir := filepath.Join(e.Dir, filepath.FromSlash(boot.EntriesDir))
	for _, x := range ents {
		if err := os.Remove(filepath.Join(dir, x.File)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove loader entry: %w", err)
		}
	}
	if len(ents) == 0 {
		return nil
	}
	return atomicfile.SyncDir(dir)
}

// Bless renames slot's counting entry (imgctl-a+2-1.conf) to its blessed name (imgctl-a.conf),
// as systemd-bless-boot does, and returns the new name. blessed is false when slot has no
// counting entry (already blessed, or none).
func (e *ESP) Bless(slot string) (name string, blessed bool, err error) {
	ents, err := e.SlotEntries(slot)
	if err != nil {
		return "", false, err
	}
	var counting []Entry
	for _, x := range ents {
		if x.Counting {
			counting = append(counting, x)
		} else {
			name = x.File
		}
	}
	switch len(counting) {
	case 0:
		return name, false, nil
	case 1:
	default:
		return "", false, fmt.Errorf("slot %s has %d counting entries (expected one)", slot, len(counting))
	}
	dir := filepath.Join(e.Dir, filepath.FromSlash(boot.EntriesDir))
	to := boot.EntryFile(slot, 0, 0, false)
	if err := os.Rename(filepath.Join(dir, counting[0].File), filepath.Join(dir, to)); err != nil {
		return "", false, fmt.Errorf("bless slot %s: %w", slot, err)
	}
	return to, true, atomicfile.SyncDir(dir)
}

// SlotImage is a slot's image.json: which image the slot holds.
type SlotImage struct {
	Image   string `json:"image"`             // manifest digest sha256:HEX
	Root    string `json:"root"`              // root blob digest sha256:HEX
	Version string `json:"version,omitempty"` // for people
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func (s SlotImage) check() error {
	if !digestRE.MatchString(s.Image) {
		return fmt.Errorf("image %q: expected sha256:HEX", s.Image)
	}
	if !digestRE.MatchString(s.Root) {
		return fmt.Errorf("root %q: expected sha256:HEX", s.Root)
	}
	return nil
}

func slotImagePath(slot string) string { return path.Join(boot.SlotDir(slot), SlotImageFile) }

// WriteSlotImage writes slot's image.json (crash-safe, like WriteFile).
func (e *ESP) WriteSlotImage(ctx context.Context, slot string, s SlotImage) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("slot %s image.json: %w", slot, err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return e.WriteFile(ctx, slotImagePath(slot), strings.NewReader(string(data)), int64(len(data)))
}

// ReadSlotImage reads slot's image.json; ok is false when there is none.
func (e *ESP) ReadSlotImage(slot string) (s SlotImage, ok bool, err error) {
	p := filepath.Join(e.Dir, filepath.FromSlash(slotImagePath(slot)))
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, err
	}
	if len(data) > 4096 {
		return s, false, fmt.Errorf("%s: %d bytes (expected a small JSON object)", p, len(data))
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return SlotImage{}, false, fmt.Errorf("%s: %w", p, err)
	}
	if err := s.check(); err != nil {
		return SlotImage{}, false, fmt.Errorf("%s: %w", p, err)
	}
	return s, true, nil
}
