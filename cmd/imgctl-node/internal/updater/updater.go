// Package updater is `imgctl-node update` (imgctl-update.service, run by imgctl-update.timer):
// it asks the update server for the channel's current image and, when it is new to this node,
// writes it into the inactive A/B slot (slotwrite), puts that slot's kernel, initrd, image.json
// and a boot-counting loader entry (+3) on the ESP, and reboots inside the maintenance window.
// The new slot is blessed (or given up) by `imgctl-node bless` after the reboot.
//
// Crash safety: the inactive slot's loader entries are removed before its partition is touched
// and its new entry is written last, so at any moment the firmware's choice is the running slot
// or a complete new one. A run that dies part-way is resumed by the next run: blocks already
// right in the slot are kept.
package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blobs"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/esp"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/slotwrite"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/flock"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

// Step names of the console lines.
const (
	StepCheck   = "update-check"   // the pointer, the manifest and the decision
	StepWrite   = "update-write"   // progress lines while the slot is written
	StepInstall = "update-install" // slot, kernel, initrd, image.json, entry
	StepReboot  = "update-reboot"
)

// LockPath serializes runs (the timer's and one started by hand).
const LockPath = "/run/imgctl/update.lock"

// maxBootBlob bounds a kernel or initrd the agent holds in memory before writing it.
const maxBootBlob = 512 << 20

// Disk is where the slots are.
type Disk struct {
	Slot      string // the running slot, boot.SlotA or boot.SlotB
	Root      string // the running root partition's device path
	Other     string // the inactive slot's partition device path
	OtherUUID string // its GPT partition GUID (the new entry's imgctl.root=PARTUUID=…)
	ESP       string // the ESP's device path
}

// Options of Run. Zero fields take the node's defaults.
type Options struct {
	ConfigPath string // updatestate.ConfigPath
	StatePath  string // updatestate.StatePath
	ImageInfo  string // the running image's image.json (imageinfo.Path)
	LockPath   string // LockPath
	Cmdline    string // the running kernel command line (/proc/cmdline's text)
	Arch       string // this node's architecture, a GOARCH name (runtime.GOARCH)

	// Locate finds the slots (default: sysfs and the GPT, see LocateDisk).
	Locate func(cmdline.Config) (Disk, error)
	// MountESP mounts the ESP (default: esp.Mount at esp.MountPoint).
	MountESP func(ctx context.Context, dev string) (*esp.ESP, error)
	// Reboot reboots the node (main passes systemctl reboot). Required.
	Reboot func(ctx context.Context) error
	Now    func() time.Time

	// Client is the update server client's settings; Server is set from the config.
	Client blobs.Client
	// RangeBlocks bounds a Range request (slotwrite's default when 0).
	RangeBlocks int
	Report      *report.Sender // nil: no boot reports
	Steps       *steplog.Logger
	Logger      *slog.Logger
}

func (o *Options) defaults() {
	if o.ConfigPath == "" {
		o.ConfigPath = updatestate.ConfigPath
	}
	if o.StatePath == "" {
		o.StatePath = updatestate.StatePath
	}
	if o.ImageInfo == "" {
		o.ImageInfo = imageinfo.Path
	}
	if o.LockPath == "" {
		o.LockPath = LockPath
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Locate == nil {
		o.Locate = func(c cmdline.Config) (Disk, error) {
			return LocateDisk(blockdev.Sys{SysDir: "/sys", DevDir: "/dev"}, c)
		}
	}
	if o.MountESP == nil {
		o.MountESP = func(ctx context.Context, dev string) (*esp.ESP, error) { return esp.Mount(ctx, dev, esp.MountPoint) }
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Steps == nil {
		o.Steps = steplog.New(io.Discard)
	}
	if o.Client.Logger == nil {
		o.Client.Logger = o.Logger
	}
}

// LocateDisk finds the running slot (imgctl.root= on the command line), the ESP on its disk and
// the other slot's partition.
func LocateDisk(sys blockdev.Sys, c cmdline.Config) (Disk, error) {
	loc, err := esp.Locate(sys, c.Root)
	if err != nil {
		return Disk{}, err
	}
	devs, err := sys.Scan()
	if err != nil {
		return Disk{}, err
	}
	sys.FillFromGPT(devs)
	other := boot.OtherSlot(loc.Slot)
	d := Disk{Slot: loc.Slot, Root: loc.Root.Path(sys.DevDir), ESP: loc.ESP.Path(sys.DevDir)}
	for _, dev := range devs {
		if dev.Type == "partition" && dev.Disk == loc.Root.Disk && dev.PartName == boot.SlotLabel(other) {
			if d.Other != "" {
				return Disk{}, fmt.Errorf("disk %s has more than one partition labelled %s", loc.Root.Disk, boot.SlotLabel(other))
			}
			d.Other, d.OtherUUID = dev.Path(sys.DevDir), dev.PartUUID
		}
	}
	if d.Other == "" || d.OtherUUID == "" {
		return Disk{}, fmt.Errorf("disk %s has no partition labelled %s with a PARTUUID: no slot to update into", loc.Root.Disk, boot.SlotLabel(other))
	}
	return d, nil
}

// errRefused marks an image this node will not install (another architecture, a Kubernetes
// minor jump, a root larger than the slot): Run logs and reports it and returns nil.
var errRefused = errors.New("refused")

// Run is one check: it returns nil when there was nothing to do, when the server could not be
// reached (the next check tries again) or when the image was refused (the step line says why),
// and an error when an install failed.
func Run(ctx context.Context, o Options) error {
	if o.Reboot == nil {
		return errors.New("updater: Options.Reboot is required")
	}
	o.defaults()
	cfg, ok, err := updatestate.ReadConfig(o.ConfigPath)
	check := o.Steps.Start(StepCheck)
	switch {
	case err != nil:
		return check.Fail(err)
	case !ok:
		check.Skip("reason", "no update section in the NodeConfig")
		return nil
	case !cfg.IsEnabled():
		check.Skip("reason", "updates are disabled (spec.update.enabled: false)")
		return nil
	}
	unlock, err := flock.Lock(ctx, o.LockPath, 0o600, func() { o.Logger.Info("waiting for another update run", "lock", o.LockPath) })
	if err != nil {
		return check.Fail(fmt.Errorf("update lock %s: %w", o.LockPath, err))
	}
	defer unlock()
	r := &run{o: o, cfg: cfg, check: check}
	r.client = o.Client
	r.client.Server = cfg.Server
	return r.run(ctx)
}

type run struct {
	o      Options
	cfg    nodeconfig.Update
	client blobs.Client
	check  *steplog.Step
	line   cmdline.Config
	disk   Disk
	esp    *esp.ESP
	state  updatestate.State
	im     update.Image
}

func (r *run) run(ctx context.Context) error {
	o := r.o
	var err error
	if r.line, err = cmdline.Parse(o.Cmdline); err != nil {
		return r.check.Fail(fmt.Errorf("kernel command line: %w", err))
	}
	if r.line.Root.IsZero() {
		r.check.Skip("reason", "not booted from a disk slot (a network root boots the channel's image at its next boot)")
		return nil
	}
	if r.disk, err = o.Locate(r.line); err != nil {
		return r.check.Fail(err)
	}
	if r.esp, err = o.MountESP(ctx, r.disk.ESP); err != nil {
		return r.check.Fail(fmt.Errorf("ESP %s: %w", r.disk.ESP, err))
	}
	defer func() {
		if err := r.esp.Close(); err != nil {
			o.Logger.Warn("unmounting the ESP", "dir", r.esp.Dir, "err", err)
		}
	}()
	if err := r.esp.CleanTemps(); err != nil {
		o.Logger.Warn("removing temp files a crashed run left on the ESP", "err", err)
	}
	if r.state, err = updatestate.Load(o.StatePath, o.Logger); err != nil {
		return r.check.Fail(err)
	}
	if why, err := r.runningBlessed(); err != nil || why != "" {
		if err != nil {
			return r.check.Fail(err)
		}
		r.check.Skip("reason", why, "slot", r.disk.Slot)
		return nil
	}
	p, err := r.pointer(ctx)
	r.state.LastCheck = o.Now().UTC()
	if err != nil {
		r.check.Fail(err, "next", "check again in "+r.cfg.IntervalDuration().String())
		return r.saveState()
	}
	running, _, err := r.esp.ReadSlotImage(r.disk.Slot)
	if err != nil {
		o.Logger.Warn("reading the running slot's image.json", "err", err)
	}
	switch {
	case p.Image == running.Image:
		r.check.Skip("reason", "the channel's image is running", "image", p.Image, "version", p.Version)
		return r.saveState()
	case r.state.HasFailed(p.Image):
		r.check.Skip("reason", "the channel's image failed on this node before (never retried automatically)", "image", p.Image, "version", p.Version)
		return r.saveState()
	}
	if r.im, err = r.manifest(ctx, p.Image); err != nil {
		r.check.Fail(err, "image", p.Image, "next", "check again in "+r.cfg.IntervalDuration().String())
		return r.saveState()
	}
	if r.im.Root.Digest == cmdline.SlotParams(o.Cmdline).RootDigest || r.im.Root.Digest == running.Root {
		r.check.Skip("reason", "the channel's image has the running root", "image", r.im.Digest, "version", r.im.Version)
		return r.saveState()
	}
	if err := r.refuse(); err != nil {
		r.check.Fail(err, "image", r.im.Digest, "version", r.im.Version)
		r.report(ctx, err)
		return r.saveState()
	}
	r.check.Done("image", r.im.Digest, "version", r.im.Version, "kubernetes", r.im.Kubernetes)
	if err := r.saveState(); err != nil {
		return err
	}
	if err := r.install(ctx); err != nil {
		if errors.Is(err, errRefused) {
			r.report(ctx, err)
			return nil
		}
		r.report(ctx, err)
		return err
	}
	return r.reboot(ctx)
}

// runningBlessed says why the node must not update now ("" when it may): an update never
// writes over the fallback slot while the running boot has not proved itself (systemd#34827).
func (r *run) runningBlessed() (string, error) {
	entries, err := r.esp.SlotEntries(r.disk.Slot)
	if err != nil {
		return "", err
	}
	if len(entries) == 0 {
		return fmt.Sprintf("the running slot %s has no loader entry on the ESP", r.disk.Slot), nil
	}
	for _, e := range entries {
		if e.Counting {
			return fmt.Sprintf("the running boot is not blessed yet (%s): the other slot is its fallback", e.File), nil
		}
	}
	return "", nil
}

func (r *run) pointer(ctx context.Context) (update.Pointer, error) {
	url, err := update.PointerURL(r.cfg.Server, r.cfg.Channel)
	if err != nil {
		return update.Pointer{}, err
	}
	data, err := r.client.Get(ctx, url, update.MaxPointerBytes)
	if err != nil {
		return update.Pointer{}, err
	}
	p, err := update.DecodePointer(bytes.NewReader(data))
	if err != nil {
		return update.Pointer{}, fmt.Errorf("GET %s: %w", url, err)
	}
	if p.Channel != r.cfg.Channel {
		return update.Pointer{}, fmt.Errorf("GET %s: the pointer is channel %q's, want %q", url, p.Channel, r.cfg.Channel)
	}
	return p, nil
}

func (r *run) manifest(ctx context.Context, digest string) (update.Image, error) {
	url, err := update.BlobURL(r.cfg.Server, digest)
	if err != nil {
		return update.Image{}, err
	}
	data, err := r.client.Get(ctx, url, update.MaxManifestBytes)
	if err != nil {
		return update.Image{}, err
	}
	im, err := update.ParseManifest(data, digest)
	if err != nil {
		return update.Image{}, fmt.Errorf("GET %s: %w", url, err)
	}
	return im, nil
}

// refuse reports why the image must not be installed on this node: another architecture, or a
// Kubernetes version more than one minor up or any minor down from the running one.
func (r *run) refuse() error {
	im := r.im
	if im.Architecture != r.o.Arch {
		return fmt.Errorf("%w: image %s (%s) is for architecture %s, this node is %s", errRefused, im.Digest, im.Version, im.Architecture, r.o.Arch)
	}
	info, err := imageinfo.Load(r.o.ImageInfo)
	if err != nil {
		return fmt.Errorf("%w: the running image's Kubernetes version: %w", errRefused, err)
	}
	return checkKubernetes(info.Kubernetes, im.Kubernetes)
}

// checkKubernetes allows staying on a minor or going one minor up (Kubernetes' version skew
// policy for a node's kubelet), nothing else.
func checkKubernetes(running, next string) error {
	rv, err := kubeversion.Parse(running)
	if err != nil {
		return fmt.Errorf("%w: the running image's Kubernetes version: %w", errRefused, err)
	}
	nv, err := kubeversion.Parse(next)
	if err != nil {
		return fmt.Errorf("%w: the image's Kubernetes version: %w", errRefused, err)
	}
	switch d := nv.Minor() - rv.Minor(); {
	case nv.Major() != rv.Major() || d > 1:
		return fmt.Errorf("%w: Kubernetes %s → %s skips a minor version (upgrade one minor at a time)", errRefused, running, next)
	case d < 0:
		return fmt.Errorf("%w: Kubernetes %s → %s is a minor version down (not supported in place)", errRefused, running, next)
	}
	return nil
}

// install writes the image into the inactive slot and makes that slot bootable, in that order.
func (r *run) install(ctx context.Context) error {
	o, im, other := r.o, r.im, boot.OtherSlot(r.disk.Slot)
	step := o.Steps.Start(StepInstall)
	fail := func(err error) error {
		return step.Fail(err, "image", im.Digest, "version", im.Version, "slot", other)
	}
	if done, err := r.installed(other); err != nil || done {
		if err != nil {
			return fail(err)
		}
		step.Skip("reason", "already installed, waiting for the reboot", "image", im.Digest, "version", im.Version, "slot", other)
		return nil
	}
	slot, err := os.OpenFile(r.disk.Other, os.O_RDWR, 0)
	if err != nil {
		return fail(fmt.Errorf("slot %s: %w", other, err))
	}
	defer slot.Close()
	size, err := slot.Seek(0, io.SeekEnd)
	if err != nil {
		return fail(fmt.Errorf("slot %s (%s): size: %w", other, r.disk.Other, err))
	}
	if im.Root.Size > size {
		err := fmt.Errorf("%w: image %s's root is %d bytes, slot %s (%s) holds %d", errRefused, im.Version, im.Root.Size, other, r.disk.Other, size)
		return fail(err)
	}
	// From here on the firmware must not pick the inactive slot: its entries go first, then
	// its old files (room on the ESP for the new ones).
	if err := r.esp.RemoveSlotEntries(other); err != nil {
		return fail(err)
	}
	for _, name := range []string{boot.SlotKernel, boot.SlotInitrd, esp.SlotImageFile} {
		p := filepath.Join(r.esp.Dir, filepath.FromSlash(boot.SlotDir(other)), name)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(err)
		}
	}
	active, err := os.Open(r.disk.Root)
	if err != nil {
		return fail(fmt.Errorf("running slot %s: %w", r.disk.Slot, err))
	}
	defer active.Close()
	activeSize, err := active.Seek(0, io.SeekEnd)
	if err != nil {
		return fail(fmt.Errorf("running slot %s (%s): size: %w", r.disk.Slot, r.disk.Root, err))
	}
	a := &slotwrite.Active{Device: active, Size: activeSize}
	if sp := cmdline.SlotParams(o.Cmdline); sp.VerityRootHash != "" {
		a.VerityRootHash, a.VerityOffset = sp.VerityRootHash, sp.VerityOffset
	}
	write := o.Steps.Start(StepWrite)
	next := int64(0) // the next progress line, in tenths
	res, err := slotwrite.Write(ctx, slotwrite.Options{
		Image: im, Slot: slot, SlotSize: size, SlotName: fmt.Sprintf("%s (%s)", boot.SlotLabel(other), r.disk.Other),
		Active: a, Blobs: &r.client, RangeBlocks: o.RangeBlocks, Logger: o.Logger,
		Progress: func(done, total int64) {
			if total > 0 && done*10 >= next*total {
				write.Progress("written", done, "total", total, "image", im.Digest)
				next = done*10/total + 1
			}
		},
	})
	if err != nil {
		return fail(err)
	}
	bootReused := 0
	for _, f := range []struct {
		name string
		blob update.Blob
	}{{boot.SlotKernel, im.Kernel}, {boot.SlotInitrd, im.Initrd}} {
		reused, err := r.bootFile(ctx, other, f.name, f.blob)
		if err != nil {
			return fail(err)
		}
		if reused {
			bootReused++
		}
	}
	if err := r.esp.WriteSlotImage(ctx, other, esp.SlotImage{Image: im.Digest, Root: im.Root.Digest, Version: im.Version}); err != nil {
		return fail(err)
	}
	if err := r.writeEntry(ctx, other); err != nil {
		return fail(err)
	}
	r.state.Staged = &updatestate.Staged{Slot: other, Image: im.Digest, Root: im.Root.Digest, Version: im.Version, Time: o.Now().UTC()}
	if err := r.saveState(); err != nil {
		return fail(err)
	}
	step.Done("image", im.Digest, "version", im.Version, "slot", other,
		"fetched", res.Fetched, "reused", res.Reused, "kept", res.Kept, "boot-files-reused", bootReused)
	return nil
}

// installed reports whether slot already holds the image with an entry that has tries left
// (the run that installed it was outside the reboot window).
func (r *run) installed(slot string) (bool, error) {
	st := r.state.Staged
	if st == nil || st.Slot != slot || st.Image != r.im.Digest {
		return false, nil
	}
	img, ok, err := r.esp.ReadSlotImage(slot)
	if err != nil || !ok || img.Image != r.im.Digest || img.Root != r.im.Root.Digest {
		return false, err
	}
	entries, err := r.esp.SlotEntries(slot)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.Counting && e.Left > 0 {
			return true, nil
		}
	}
	return false, nil
}

// bootFile downloads a kernel or initrd, checks its digest and writes it into the slot's
// directory on the ESP.
//
// A file the running slot already has on the ESP with the same digest (a kubelet update keeps
// the kernel and initrd) is copied from there instead of fetched; reused reports it.
func (r *run) bootFile(ctx context.Context, slot, name string, b update.Blob) (reused bool, err error) {
	if b.Size > maxBootBlob {
		return false, fmt.Errorf("%s %s is %d bytes, more than the %d a boot file may have", name, b.Digest, b.Size, maxBootBlob)
	}
	dst := path.Join(boot.SlotDir(slot), name)
	if data, ok := r.runningBootFile(name, b); ok {
		return true, r.esp.WriteFile(ctx, dst, bytes.NewReader(data), b.Size)
	}
	url, err := update.BlobURL(r.cfg.Server, b.Digest)
	if err != nil {
		return false, err
	}
	data, err := r.client.Get(ctx, url, b.Size)
	if err != nil {
		return false, err
	}
	if got := digestOf(data); got != b.Digest || int64(len(data)) != b.Size {
		return false, fmt.Errorf("GET %s: %d bytes hashing to %s, want %d bytes with the manifest's digest", url, len(data), got, b.Size)
	}
	return false, r.esp.WriteFile(ctx, dst, bytes.NewReader(data), b.Size)
}

// runningBootFile returns the running slot's copy of a boot file when it has b's size and
// digest (hashed now: the ESP is not trusted to still hold what was written).
func (r *run) runningBootFile(name string, b update.Blob) ([]byte, bool) {
	p := filepath.Join(r.esp.Dir, filepath.FromSlash(boot.SlotDir(r.disk.Slot)), name)
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Size() != b.Size {
		return nil, false
	}
	data, err := os.ReadFile(p)
	if err != nil || int64(len(data)) != b.Size || digestOf(data) != b.Digest {
		return nil, false
	}
	return data, true
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeEntry writes the slot's loader entry with boot counting: the last write of an install.
func (r *run) writeEntry(ctx context.Context, slot string) error {
	im := r.im
	top, err := r.esp.MaxVersion()
	if err != nil {
		return err
	}
	e := boot.Entry{
		Slot:    slot,
		Version: top + 1,
		Title:   fmt.Sprintf("imgctl node %s (slot %s)", im.Version, strings.ToUpper(slot)),
		Cmdline: boot.SlotCmdline(im.Cmdline, boot.SlotParams{
			Root: boot.PartUUIDDevice(r.disk.OtherUUID), State: stateDevice(r.line),
			RootDigest: im.Root.Digest, VerityRootHash: im.VerityRootHash, VerityOffset: im.VerityOffset,
		}),
	}
	text := e.Marshal()
	name := path.Join(boot.EntriesDir, boot.EntryFile(slot, boot.BootTries, 0, true))
	return r.esp.WriteFile(ctx, name, bytes.NewReader(text), int64(len(text)))
}

func stateDevice(c cmdline.Config) string {
	if c.State.IsZero() {
		return ""
	}
	return c.State.String()
}

func (r *run) reboot(ctx context.Context) error {
	step := r.o.Steps.Start(StepReboot)
	now := r.o.Now()
	if !r.cfg.InWindow(now) {
		step.Skip("reason", "outside the reboot window "+r.cfg.Window+" UTC", "now", now.UTC().Format("15:04"), "slot", boot.OtherSlot(r.disk.Slot))
		return nil
	}
	step.Done("slot", boot.OtherSlot(r.disk.Slot), "image", r.im.Digest, "version", r.im.Version)
	if err := r.o.Reboot(ctx); err != nil {
		return fmt.Errorf("reboot into slot %s: %w", boot.OtherSlot(r.disk.Slot), err)
	}
	return nil
}

func (r *run) saveState() error {
	if err := updatestate.Save(r.o.StatePath, r.state); err != nil {
		return fmt.Errorf("update state: %w", err)
	}
	return nil
}

// report sends a failed update's report (phase update) when a metadata server is configured.
// Success is reported by bless once the new slot proved itself, never here.
func (r *run) report(ctx context.Context, cause error) {
	if r.o.Report == nil {
		return
	}
	rep := r.o.Report.Build(nodeapi.PhaseUpdate, r.o.Steps.Steps(), cause, cmdline.SlotParams(r.o.Cmdline).RootDigest, "")
	rep.Image, rep.Version = r.im.Digest, r.im.Version
	_ = r.o.Report.Send(ctx, rep)
}
