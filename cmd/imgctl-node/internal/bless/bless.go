// Package bless is imgctl-node bless (imgctl-bless.service, after kube-node-configuration): it
// marks the running A/B slot good once the node proved itself, and records the slots that did
// not.
//
//   - The running slot's entry is counting (imgctl-b+2-1.conf) and configure succeeded (its
//     marker exists: the kubelet answered /healthz): rename it to the blessed name
//     (imgctl-b.conf), report phase update ok, clear the staged update.
//   - Counting and configure failed: report, and reboot without blessing, so systemd-boot
//     counts the try and, once the tries are used up, boots the other slot. Never on a blessed
//     entry, and only when the other slot has an entry to fall back to (blessed, or with tries
//     left): a fresh disk's only slot is not rebooted in a loop.
//   - On every run: the other slot's entry with no tries left (imgctl-b+0-3.conf) is an image
//     that failed: record it in the update state (never retried automatically), report it and
//     remove the entry, which frees the slot for the next update.
//
// systemd's own systemd-bless-boot.service would bless at boot-complete.target, before the
// kubelet is healthy: the bootstrap layer masks it.
package bless

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/configure"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/esp"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/nodeapi"
)

// Options configure Run. The function fields exist for tests.
type Options struct {
	ESP        *esp.ESP
	Slot       string // the running slot (esp.Locate)
	Configured bool   // configure's marker exists
	RootDigest string // imgctl.root-digest= of the running boot ("" if none)
	Debug      bool   // imgctl.debug: never reboot
	StatePath  string // updatestate.StatePath on a node
	Steps      *steplog.Logger
	Logger     *slog.Logger
	Sender     *report.Sender // builds reports (redaction); nil: no server
	Reboot     func(ctx context.Context) error
	Report     func(ctx context.Context, r nodeapi.Report)
	Now        func() time.Time
}

// ErrNotConfigured is Run's error when the running slot is on trial and configure failed.
var ErrNotConfigured = errors.New("configuration did not succeed (no " + configure.MarkerPath + "): the kubelet was not healthy")

// Run blesses, reboots or records as the package comment says. It returns ErrNotConfigured
// (wrapped) when the running slot was on trial and configure failed, after the reboot was
// requested.
func Run(ctx context.Context, o Options) error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	st, stateErr := updatestate.Load(o.StatePath, o.Logger)
	if stateErr != nil {
		o.Logger.Warn("update state unreadable: failed images are not recorded this boot", "err", stateErr)
	}
	dirty := false
	save := func() {
		if stateErr != nil || !dirty {
			return
		}
		if err := updatestate.Save(o.StatePath, st); err != nil {
			o.Logger.Warn("update state not saved", "err", err)
		}
	}
	defer save()

	ents, err := o.ESP.Entries()
	if err != nil {
		return o.Steps.Start("update-bless").Fail(err)
	}
	other := boot.OtherSlot(o.Slot)
	var running []esp.Entry
	otherGood := false
	for _, e := range ents {
		switch e.Slot {
		case o.Slot:
			running = append(running, e)
		case other:
			if e.Counting && e.Left == 0 {
				if o.rollback(ctx, e, &st) {
					dirty = true
				}
				continue
			}
			otherGood = true
		}
	}
	if len(running) != 1 {
		reason := fmt.Sprintf("no loader entry for slot %s", o.Slot)
		if len(running) > 1 {
			reason = fmt.Sprintf("%d loader entries for slot %s", len(running), o.Slot)
		}
		o.Steps.Start("update-bless").Skip("reason", reason)
		return nil
	}
	cur := running[0]
	if !cur.Counting {
		o.Steps.Start("update-bless").Skip("reason", fmt.Sprintf("slot %s is already blessed", o.Slot))
		return nil
	}

	img, hasImg := o.slotImage(o.Slot)
	if o.Configured {
		s := o.Steps.Start("update-bless")
		name, _, err := o.ESP.Bless(o.Slot)
		if err != nil {
			return s.Fail(err, "slot", o.Slot)
		}
		kv := []any{"slot", o.Slot}
		if hasImg {
			kv = append(kv, "image", img.Image, "version", img.Version)
		}
		kv = append(kv, "root", o.rootOf(img, hasImg), "entry", name)
		s.Done(kv...)
		if st.Staged != nil && st.Staged.Slot == o.Slot {
			st.Staged, dirty = nil, true
		}
		if hasImg { // an update's image proved itself; a fresh disk's first slot is no update
			o.send(ctx, nil, img)
		}
		return nil
	}

	failErr := fmt.Errorf("slot %s: %w", o.Slot, ErrNotConfigured)
	_ = o.Steps.Start("update-bless").Fail(failErr, "slot", o.Slot, "tries-left", cur.Left, "tries", cur.Done)
	if hasImg { // configure's own report covers a slot that no update wrote
		o.send(ctx, failErr, img)
	}
	rs := o.Steps.Start("update-reboot")
	switch {
	case o.Debug:
		rs.Skip("reason", boot.KeyDebug+" is set")
	case !otherGood: // rebooting would only retry this slot: a fresh disk's, or a last resort
		rs.Skip("reason", "no other slot to fall back to")
	default:
		save() // the reboot may not let the deferred save run
		dirty = false
		if err := o.Reboot(ctx); err != nil {
			return rs.Fail(fmt.Errorf("%w; reboot: %w", failErr, err))
		}
		rs.Done("reason", "slot "+o.Slot+" not blessed")
	}
	return failErr
}

// rollback handles the other slot's used-up entry: record its image as failed, report, remove
// the entry. It reports whether the state changed.
func (o Options) rollback(ctx context.Context, e esp.Entry, st *updatestate.State) bool {
	s := o.Steps.Start("update-rollback")
	img, hasImg := o.slotImage(e.Slot)
	root := img.Root
	if !hasImg {
		root = o.entryRoot(e.File)
	}
	fail := fmt.Errorf("slot %s used up its %d boot tries without a healthy kubelet: back on slot %s", e.Slot, e.Done, o.Slot)
	kv := []any{"slot", e.Slot, "image", orUnknown(img.Image), "version", orUnknown(img.Version), "root", orUnknown(root), "tries", e.Done}
	changed := false
	if hasImg && !st.HasFailed(img.Image) {
		st.AddFailed(updatestate.Failed{Image: img.Image, Root: img.Root, Version: img.Version, Reason: fail.Error(), Time: o.Now().UTC()})
		changed = true
	}
	if st.Staged != nil && st.Staged.Slot == e.Slot {
		st.Staged, changed = nil, true
	}
	if err := o.ESP.RemoveSlotEntries(e.Slot); err != nil {
		_ = s.Fail(fmt.Errorf("%w; removing its entry: %w", fail, err), kv...)
	} else {
		_ = s.Fail(fail, kv...)
	}
	o.send(ctx, fail, img)
	return changed
}

func (o Options) slotImage(slot string) (esp.SlotImage, bool) {
	img, ok, err := o.ESP.ReadSlotImage(slot)
	if err != nil {
		o.Logger.Warn("slot image.json unreadable", "slot", slot, "err", err)
	}
	return img, ok
}

// entryRoot is imgctl.root-digest= from an entry's options ("" if none).
func (o Options) entryRoot(file string) string {
	ent, err := o.ESP.ReadEntry(file)
	if err != nil {
		return ""
	}
	for _, p := range ent.Cmdline {
		if v, ok := strings.CutPrefix(p, boot.KeyRootDigest+"="); ok {
			return v
		}
	}
	return ""
}

func (o Options) rootOf(img esp.SlotImage, ok bool) string {
	if ok {
		return img.Root
	}
	return orUnknown(o.RootDigest)
}

// send reports phase update: ok when failed is nil. Bounded by report's budget; never fails Run.
func (o Options) send(ctx context.Context, failed error, img esp.SlotImage) {
	if o.Report == nil {
		return
	}
	r := o.Sender.Build(nodeapi.PhaseUpdate, o.Steps.Steps(), failed, o.RootDigest, "")
	r.Image, r.Version = img.Image, img.Version
	r.Time = o.Now().UTC()
	o.Report(ctx, r)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
