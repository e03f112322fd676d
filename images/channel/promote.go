package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors of rollback, besides those of entry.go (test with errors.Is).
var (
	// ErrNoPrevious: a rollback without a target found no earlier image to go back to.
	ErrNoPrevious = errors.New("nothing to roll back to")
	// ErrNotInHistory: a rollback target was never in the channel (roll back with --force).
	ErrNotInHistory = errors.New("image was never in the channel")
)

// Promotion asks to point channel To at an image.
type Promotion struct {
	// Image is a full digest, a unique digest prefix, a version, or the name of a configured
	// channel, meaning the image that channel points to now.
	Image string
	// To is the channel to move.
	To     string
	Reason string
	// Force skips the promotion order: the image need not have been in the previous channel.
	Force bool
	// Who and Tool are recorded in the entry (defaults: DefaultWho(), DefaultTool).
	Who, Tool string
}

// Promote points channel p.To at image p.Image, in the store st, if the rules allow it:
//   - the image's manifest, config and artifacts are all in st and hash to their digests;
//   - promoting into a channel other than the first of the order needs the image to have been
//     in the channel before it (ErrSkippedStage), unless p.Force (the entry records Forced);
//   - l.Verify, if set, accepts the image.
//
// Promoting the image the channel already points to changes nothing and returns the channel's
// last entry. The move is a compare-and-swap against the head read when Promote starts, so of
// concurrent promoters exactly one wins and the others get an error wrapping ErrConflict.
func (l *Log) Promote(ctx context.Context, st *store.Store, p Promotion) (Entry, error) {
	return l.Mover(st).Promote(ctx, p)
}

// Promote is Log.Promote for any Backend and Images.
func (m *Mover) Promote(ctx context.Context, p Promotion) (Entry, error) {
	order, err := m.known(p.To)
	if err != nil {
		return Entry{}, fmt.Errorf("promoting %q: %w", p.Image, err)
	}
	h, err := m.Channels.History(ctx, p.To)
	if err != nil {
		return Entry{}, fmt.Errorf("promoting %q: %w", p.Image, err)
	}
	head := h.Head()
	img, err := m.resolve(ctx, order, p.Image)
	if err != nil {
		return Entry{}, fmt.Errorf("promoting to channel %s: %w", p.To, err)
	}
	name := describe(img)
	repair := "imgctl promote " + img.Digest().String() + " --to " + p.To
	if img.Digest() == head {
		m.logger().Info("channel already points to the image", "channel", p.To, "image", img.Digest(), "version", img.Config.Version)
		last := h.Entries[len(h.Entries)-1]
		if err := m.mirrorHead(ctx, last, img, repair); err != nil {
			return last, fmt.Errorf("promoting %s to channel %s: %w", name, p.To, err)
		}
		return last, nil
	}

	forced := false
	if i := slices.Index(order, p.To); i > 0 {
		prev := order[i-1]
		ph, err := m.Channels.History(ctx, prev)
		if err != nil {
			return Entry{}, fmt.Errorf("promoting %s to channel %s: %w", name, p.To, err)
		}
		if !ph.contains(img.Digest()) {
			if !p.Force {
				return Entry{}, fmt.Errorf("promoting %s to channel %s: %w: it was never in channel %s, the stage before %s (promote it to %s first, or force)",
					name, p.To, ErrSkippedStage, prev, p.To, prev)
			}
			forced = true
			m.logger().Warn("forced promotion skips a stage", "channel", p.To, "skipped", prev, "image", img.Digest())
		}
	}
	if err := m.check(ctx, img); err != nil {
		return Entry{}, fmt.Errorf("promoting %s to channel %s: %w", name, p.To, err)
	}
	commit, err := m.prepare(ctx, p.To, head, img)
	if err != nil {
		return Entry{}, fmt.Errorf("promoting %s to channel %s: %w", name, p.To, err)
	}
	e, err := m.move(ctx, p.To, head, img, Entry{Action: ActionPromote, Reason: p.Reason, Forced: forced, Who: p.Who, Tool: p.Tool})
	if err != nil && !errors.Is(err, ErrConflict) { // a conflict's message names all
		err = fmt.Errorf("promoting %s: %w", name, err)
	}
	if err != nil {
		return e, err
	}
	return e, m.commit(ctx, commit, e, repair)
}

// Rollback asks to point a channel back at an image it pointed to before.
type Rollback struct {
	Channel string
	// To is the image to go back to, as in Promotion.Image; empty means the image the channel
	// pointed to before its current image was promoted into it.
	To     string
	Reason string
	// Force allows a To that was never in the channel (the entry records Forced).
	Force     bool
	Who, Tool string
}

// Rollback points channel r.Channel back at an earlier image. Without r.To, that is the image
// the channel pointed to before its current head was promoted into it; rollback entries are
// skipped, so repeated rollbacks walk further back (promotions A, B, C; rollback: B; rollback:
// A; rollback: ErrNoPrevious). With r.To, the image must have been in the channel's history
// (else ErrNotInHistory, unless r.Force). The image must be whole in st and accepted by
// l.Verify, as for Promote, and the move is a compare-and-swap in the same way. Rolling back to
// the image the channel points to changes nothing and returns the last entry.
func (l *Log) Rollback(ctx context.Context, st *store.Store, r Rollback) (Entry, error) {
	return l.Mover(st).Rollback(ctx, r)
}

// Rollback is Log.Rollback for any Backend and Images.
func (m *Mover) Rollback(ctx context.Context, r Rollback) (Entry, error) {
	order, err := m.known(r.Channel)
	if err != nil {
		return Entry{}, fmt.Errorf("rolling back: %w", err)
	}
	h, err := m.Channels.History(ctx, r.Channel)
	if err != nil {
		return Entry{}, fmt.Errorf("rolling back: %w", err)
	}
	head := h.Head()
	if head == "" {
		return Entry{}, fmt.Errorf("rolling back channel %s: %w", r.Channel, ErrEmpty)
	}

	var img store.Image
	forced := false
	if r.To == "" {
		target, err := h.previous()
		if err != nil {
			return Entry{}, fmt.Errorf("rolling back channel %s: %w", r.Channel, err)
		}
		if img, err = m.Images.Resolve(ctx, target.String()); err != nil {
			return Entry{}, fmt.Errorf("rolling back channel %s to %s: %w", r.Channel, target, err)
		}
	} else {
		if img, err = m.resolve(ctx, order, r.To); err != nil {
			return Entry{}, fmt.Errorf("rolling back channel %s: %w", r.Channel, err)
		}
		if img.Digest() == head {
			m.logger().Info("channel already points to the image", "channel", r.Channel, "image", head, "version", img.Config.Version)
			last := h.Entries[len(h.Entries)-1]
			if err := m.mirrorHead(ctx, last, img, rollbackRepair(r.Channel, img)); err != nil {
				return last, fmt.Errorf("rolling back channel %s to %s: %w", r.Channel, describe(img), err)
			}
			return last, nil
		}
		if !h.contains(img.Digest()) {
			if !r.Force {
				return Entry{}, fmt.Errorf("rolling back channel %s to %s: %w (force to do it anyway)", r.Channel, describe(img), ErrNotInHistory)
			}
			forced = true
			m.logger().Warn("forced rollback to an image never in the channel", "channel", r.Channel, "image", img.Digest())
		}
	}
	name := describe(img)
	if err := m.check(ctx, img); err != nil {
		return Entry{}, fmt.Errorf("rolling back channel %s to %s: %w", r.Channel, name, err)
	}
	commit, err := m.prepare(ctx, r.Channel, head, img)
	if err != nil {
		return Entry{}, fmt.Errorf("rolling back channel %s to %s: %w", r.Channel, name, err)
	}
	e, err := m.move(ctx, r.Channel, head, img, Entry{Action: ActionRollback, Reason: r.Reason, Forced: forced, Who: r.Who, Tool: r.Tool})
	if err != nil && !errors.Is(err, ErrConflict) {
		err = fmt.Errorf("rolling back to %s: %w", name, err)
	}
	if err != nil {
		return e, err
	}
	return e, m.commit(ctx, commit, e, rollbackRepair(r.Channel, img))
}

// rollbackRepair is the command that finishes a rollback's mirror: with the target named, as
// a bare rollback would go further back.
func rollbackRepair(ch string, img store.Image) string {
	return "imgctl rollback " + ch + " --to " + img.Digest().String()
}

// prepare asks the Mirror, if any, whether channel ch may move from head to img.
func (m *Mover) prepare(ctx context.Context, ch string, head digest.Digest, img store.Image) (func(context.Context) error, error) {
	if m.Mirror == nil {
		return nil, nil
	}
	return m.Mirror.Prepare(ctx, ch, head, img)
}

// commit runs the Mirror's commit after move e was made; its error says that the channel moved
// here and which command finishes the mirror.
func (m *Mover) commit(ctx context.Context, commit func(context.Context) error, e Entry, repair string) error {
	if commit == nil {
		return nil
	}
	if err := commit(ctx); err != nil {
		return fmt.Errorf("channel %s moved to %s (entry %d), but mirroring the move failed: %w (run `%s` again to finish it)",
			e.Channel, e.To, e.Seq, err, repair)
	}
	return nil
}

// mirrorHead mirrors the channel's last move again (a rerun at the head): from that move's
// From to the head, so a mirror left half-way by a failed commit is finished.
func (m *Mover) mirrorHead(ctx context.Context, last Entry, img store.Image, repair string) error {
	commit, err := m.prepare(ctx, last.Channel, last.From, img)
	if err != nil {
		return err
	}
	return m.commit(ctx, commit, last, repair)
}

// move points channel ch from head to img with entry e (To and ToVersion filled in here), while
// the Images hold img so it cannot be deleted meanwhile.
func (m *Mover) move(ctx context.Context, ch string, head digest.Digest, img store.Image, e Entry) (Entry, error) {
	e.To, e.ToVersion = img.Digest(), img.Config.Version
	var moved Entry
	err := m.Images.Hold(ctx, img, func() error {
		var err error
		moved, err = m.Channels.Move(ctx, ch, head, e)
		return err
	})
	return moved, err
}

// previous is the target of a rollback without one: the From of the last promotion into the
// current head.
func (h History) previous() (digest.Digest, error) {
	head := h.Head()
	for i := len(h.Entries) - 1; i >= 0; i-- {
		e := h.Entries[i]
		if e.Action != ActionPromote || e.To != head {
			continue
		}
		if e.From == "" {
			return "", fmt.Errorf("%s was the first image of the channel (entry %d): %w", head, e.Seq, ErrNoPrevious)
		}
		return e.From, nil
	}
	return "", fmt.Errorf("%s was never promoted into the channel: %w", head, ErrNoPrevious)
}

// contains reports whether the channel ever pointed to d.
func (h History) contains(d digest.Digest) bool {
	return slices.ContainsFunc(h.Entries, func(e Entry) bool { return e.To == d })
}

// Resolve finds an image as Promote does: a configured channel's name means the image it points
// to, anything else is a digest, unique digest prefix or version.
func (m *Mover) Resolve(ctx context.Context, ref string) (store.Image, error) {
	order, err := m.Channels.Order()
	if err != nil {
		return store.Image{}, err
	}
	return m.resolve(ctx, order, ref)
}

// resolve finds an image by reference: a configured channel's name means its head, anything
// else is looked up by the Images (digest, unique prefix, version).
func (m *Mover) resolve(ctx context.Context, order []string, ref string) (store.Image, error) {
	if ref == "" {
		return store.Image{}, errors.New("no image given")
	}
	if slices.Contains(order, ref) {
		h, err := m.Channels.History(ctx, ref)
		if err != nil {
			return store.Image{}, err
		}
		head := h.Head()
		if head == "" {
			return store.Image{}, fmt.Errorf("image of channel %s: %w", ref, ErrEmpty)
		}
		img, err := m.Images.Resolve(ctx, head.String())
		if err != nil {
			return store.Image{}, fmt.Errorf("image of channel %s: %w", ref, err)
		}
		return img, nil
	}
	return m.Images.Resolve(ctx, ref)
}

// check refuses an image that is not whole, or that the Verify policy rejects.
func (m *Mover) check(ctx context.Context, img store.Image) error {
	if err := m.Images.Check(ctx, img); err != nil {
		return err
	}
	if m.Verify != nil {
		if err := m.Verify(ctx, img); err != nil {
			return fmt.Errorf("refused by the signature policy: %w", err)
		}
	}
	return nil
}

// known returns the order, or ErrUnknownChannel if ch is not in it.
func (m *Mover) known(ch string) ([]string, error) {
	order, err := m.Channels.Order()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(order, ch) {
		return order, fmt.Errorf("channel %q: %w (the promotion order is %s)", ch, ErrUnknownChannel, strings.Join(order, ", "))
	}
	return order, nil
}

func (m *Mover) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}

// Mover is the Mover of the local store st with this Log's channels and policy.
func (l *Log) Mover(st *store.Store) *Mover {
	return &Mover{Channels: l, Images: LocalImages{Store: st}, Verify: l.Verify, Logger: l.log}
}

// checkBlobs hashes the manifest, the config and every artifact of img, so that no channel
// moves to an image that could not be served whole. The error names the first bad blob and
// wraps store.ErrNotFound or store.ErrDigestMismatch.
func checkBlobs(ctx context.Context, st *store.Store, img store.Image) error {
	type blob struct {
		what string
		desc ocispec.Descriptor
	}
	blobs := []blob{{"manifest", img.Descriptor}, {"config", img.Manifest.Config}}
	for _, a := range img.Manifest.Layers {
		blobs = append(blobs, blob{fmt.Sprintf("artifact %q", a.Annotations[manifest.AnnotationTitle]), a})
	}
	buf := make([]byte, 1<<20)
	for _, b := range blobs {
		if err := hashBlob(ctx, st, b.desc, buf); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return fmt.Errorf("%s: %w (run `imgctl store verify`)", b.what, err)
		}
	}
	return nil
}

// hashBlob reads blob desc through the store's verifying reader.
func hashBlob(ctx context.Context, st *store.Store, desc ocispec.Descriptor, buf []byte) error {
	rc, err := st.OpenBlob(ctx, desc.Digest)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("blob %s is missing: %w", desc.Digest, store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer func() { _ = rc.Close() }()
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := rc.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if errors.Is(err, store.ErrDigestMismatch) {
			return fmt.Errorf("blob %s is corrupt (its content does not hash to its digest): %w", desc.Digest, store.ErrDigestMismatch)
		}
		if err != nil {
			return fmt.Errorf("reading blob %s: %w", desc.Digest, err)
		}
	}
	if n != desc.Size {
		return fmt.Errorf("blob %s is corrupt (%d bytes, the manifest says %d): %w", desc.Digest, n, desc.Size, store.ErrDigestMismatch)
	}
	return nil
}

// describe names an image for messages: digest and version.
func describe(img store.Image) string {
	if img.Config.Version == "" {
		return img.Digest().String()
	}
	return fmt.Sprintf("%s (%s)", img.Digest(), img.Config.Version)
}
