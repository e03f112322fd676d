package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	_ channel.Backend = (*Channels)(nil)
	_ channel.Images  = (*Images)(nil)
)

// maxSettle bounds how long Move waits after its push before reading the history back.
const maxSettle = 2 * time.Second

// Channels keeps channel histories in a registry repository (tags CH and CH.history, see
// PushChannel): a channel.Backend, so that a channel.Mover can promote and roll back channels
// kept in a registry. A registry cannot compare-and-swap a tag, so Move is best effort (see
// Move and PushChannel): it reports a writer that moved the channel before it wrote, or whose
// history replaced its own before it returns; only a writer slower than that wait can still
// replace its entry unnoticed. Serialize promotions (one job at a time) to rule that out.
type Channels struct {
	// Repo is REGISTRY/REPOSITORY.
	Repo    string
	Options Options
	// OrderList is the promotion order; nil means channel.DefaultOrder.
	OrderList []string
}

// Order implements channel.Backend: OrderList, or channel.DefaultOrder if it is nil.
func (c *Channels) Order() ([]string, error) {
	if c.OrderList == nil {
		return slices.Clone(channel.DefaultOrder), nil
	}
	if len(c.OrderList) == 0 {
		return nil, fmt.Errorf("promotion order of %s: at least one channel is needed", c.Repo)
	}
	for i, ch := range c.OrderList {
		if err := channel.ValidateName(ch); err != nil {
			return nil, fmt.Errorf("promotion order of %s: %w", c.Repo, err)
		}
		if slices.Contains(c.OrderList[:i], ch) {
			return nil, fmt.Errorf("promotion order of %s: channel %q listed twice", c.Repo, ch)
		}
	}
	return slices.Clone(c.OrderList), nil
}

// known returns an error wrapping channel.ErrUnknownChannel if ch is not in the order.
func (c *Channels) known(ch string) error {
	order, err := c.Order()
	if err != nil {
		return err
	}
	if !slices.Contains(order, ch) {
		return fmt.Errorf("channel %q: %w (the promotion order is %s)", ch, channel.ErrUnknownChannel, strings.Join(order, ", "))
	}
	return nil
}

// History implements channel.Backend: the history of channel ch as PullChannel reads it, or an
// empty history (no entries) for a channel never pushed.
func (c *Channels) History(ctx context.Context, ch string) (channel.History, error) {
	if err := c.known(ch); err != nil {
		return channel.History{}, err
	}
	return c.read(ctx, ch)
}

// read pulls and checks the history of ch.
func (c *Channels) read(ctx context.Context, ch string) (channel.History, error) {
	h, err := PullChannel(ctx, c.Repo, ch, c.Options)
	if errors.Is(err, channel.ErrEmpty) {
		return channel.History{SchemaVersion: 1, Channel: ch, Entries: []channel.Entry{}}, nil
	}
	if err != nil {
		return channel.History{}, err
	}
	if err := h.Check(ch); err != nil {
		return channel.History{}, fmt.Errorf("history of channel %s in %s: %w", ch, c.Repo, err)
	}
	if h.Entries == nil {
		h.Entries = []channel.Entry{}
	}
	return h, nil
}

// Move implements channel.Backend: it appends e to channel ch's history if the channel's head
// in the registry is expect ("" for a channel never pushed), else fails with an error wrapping
// channel.ErrConflict that names both. It fills and checks e as the local channel.Log does:
// Seq, Channel, From, FromVersion and When (UTC) when zero (and they must be right when not),
// Who and Tool with defaults. The new history goes up with PushChannel, whose conflict errors
// pass through unchanged. Then Move waits as long as the push took (at most two seconds), so
// that a writer that read the registry before our write has had about as long as we needed to
// write too, and reads the history back: if another writer's history replaced ours, the error
// wraps channel.ErrConflict (our entry stays in the registry only as a referrer of e.To).
func (c *Channels) Move(ctx context.Context, ch string, expect digest.Digest, e channel.Entry) (channel.Entry, error) {
	if err := c.known(ch); err != nil {
		return channel.Entry{}, err
	}
	if err := e.To.Validate(); err != nil {
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s: image %q: %w", ch, c.Repo, e.To, err)
	}
	if expect != "" {
		if err := expect.Validate(); err != nil {
			return channel.Entry{}, fmt.Errorf("moving channel %s in %s: expected head %q: %w", ch, c.Repo, expect, err)
		}
	}
	switch {
	case e.Action != channel.ActionPromote && e.Action != channel.ActionRollback:
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s to %s: unknown action %q", ch, c.Repo, e.To, e.Action)
	case e.Channel != "" && e.Channel != ch:
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s to %s: entry is for channel %q", ch, c.Repo, e.To, e.Channel)
	case e.From != "" && e.From != expect:
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s to %s: entry moves from %s, but the expected head is %s",
			ch, c.Repo, e.To, e.From, showHead(expect))
	}
	e.Channel, e.From = ch, expect
	if e.When.IsZero() {
		e.When = time.Now()
	}
	e.When = e.When.UTC()
	if e.Who == "" {
		e.Who = channel.DefaultWho()
	}
	if e.Tool == "" {
		e.Tool = channel.DefaultTool
	}

	h, err := c.read(ctx, ch)
	if err != nil {
		return channel.Entry{}, err
	}
	if head := h.Head(); head != expect {
		return channel.Entry{}, fmt.Errorf("channel %s in %s moved from %s to %s while %s %s; retry: %w",
			ch, c.Repo, showHead(expect), showHead(head), moveVerb(e.Action), e.To, channel.ErrConflict)
	}
	if e.To == expect {
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s: it already points to %s", ch, c.Repo, e.To)
	}
	next := len(h.Entries) + 1
	if e.Seq != 0 && e.Seq != next {
		return channel.Entry{}, fmt.Errorf("channel %s in %s: entry has seq %d, but the next is %d: %w", ch, c.Repo, e.Seq, next, channel.ErrConflict)
	}
	e.Seq = next
	if len(h.Entries) > 0 && e.FromVersion == "" {
		e.FromVersion = h.Entries[len(h.Entries)-1].ToVersion
	}
	if err := ctx.Err(); err != nil {
		return channel.Entry{}, fmt.Errorf("moving channel %s in %s: %w", ch, c.Repo, err)
	}

	nh := channel.History{SchemaVersion: h.SchemaVersion, Channel: ch, Entries: append(slices.Clip(h.Entries), e)}
	start := time.Now()
	if err := PushChannel(ctx, c.Repo, nh, c.Options); err != nil {
		if errors.Is(err, channel.ErrConflict) {
			return channel.Entry{}, err
		}
		return channel.Entry{}, fmt.Errorf("moving channel %s to %s: %w", ch, e.To, err)
	}
	settle := min(time.Since(start), maxSettle)
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return channel.Entry{}, fmt.Errorf("moving channel %s to %s: confirming the move: %w", ch, e.To, ctx.Err())
	}
	if err := c.confirm(ctx, ch, e); err != nil {
		return channel.Entry{}, err
	}
	c.Options.logger().Info("moved channel", "repo", c.Repo, "channel", ch, "action", e.Action, "seq", e.Seq,
		"from", e.From, "to", e.To, "version", e.ToVersion, "forced", e.Forced, "who", e.Who)
	return e, nil
}

// confirm reads the history of ch back after a push and returns an error wrapping
// channel.ErrConflict unless it still holds e at its seq (later entries may follow). When it
// does not, our push may have moved tag CH after the other writer did: confirm points the tag
// back at the head of the history the registry holds (PushChannel of that same history only
// moves the tag).
func (c *Channels) confirm(ctx context.Context, ch string, e channel.Entry) (err error) {
	defer func() { err = c.Options.explainAuth(err, c.Repo) }()
	r, err := parseRepo(c.Repo, c.Options)
	if err != nil {
		return err
	}
	_, histTag, err := channelTags(r, ch)
	if err != nil {
		return err
	}
	cl, err := newClient(ctx, r.Registry, c.Options)
	if err != nil {
		return fmt.Errorf("confirming the move of channel %s in %s: %w", ch, r, err)
	}
	h, _, err := cl.readHistory(ctx, histTag, ch)
	if err != nil {
		return fmt.Errorf("confirming the move of channel %s in %s: %w", ch, r, err)
	}
	if len(h.Entries) >= e.Seq && entryEqual(h.Entries[e.Seq-1], e) {
		return nil
	}
	tag := fmt.Sprintf("tag %s follows the registry's history again", ch)
	if len(h.Entries) == 0 {
		tag = fmt.Sprintf("tag %s may still name %s", ch, e.To)
	} else if err := PushChannel(ctx, c.Repo, h, c.Options); err != nil {
		c.Options.logger().Warn("could not point the channel tag back at the registry's history", "repo", r.String(), "channel", ch, "error", err)
		tag = fmt.Sprintf("tag %s may still name %s: %v", ch, e.To, err)
	}
	return fmt.Errorf("channel %s in %s: another writer replaced the history just after this move (entry %d, to %s) was pushed, so it is lost from %s (its history manifest remains a referrer of %s; %s); retry: %w",
		ch, r, e.Seq, e.To, histTag.TagStr(), e.To, tag, channel.ErrConflict)
}

// showHead prints a head, which may be empty.
func showHead(d digest.Digest) string {
	if d == "" {
		return "(empty)"
	}
	return d.String()
}

func moveVerb(action string) string {
	if action == channel.ActionRollback {
		return "rolling back to"
	}
	return "promoting"
}

// Images are the imgctl images of one registry repository: a channel.Images, for channels
// kept by Channels.
type Images struct {
	// Repo is REGISTRY/REPOSITORY.
	Repo    string
	Options Options
}

// Resolve implements channel.Images: ref is a full digest (sha256:…, or its 64 hex digits),
// looked up as REPO@digest, or a version, looked up as REPO:Tag(version). A digest prefix cannot
// be resolved in a registry (it cannot list manifests): the error wraps store.ErrNotFound and
// says so. The manifest must be an imgctl image in the form Pull accepts (else an error wrapping
// ErrNotImgctl, or naming the digest it should have); the returned Image is what the store holds
// for the same image, its Descriptor carrying the annotations of a store index entry.
func (i *Images) Resolve(ctx context.Context, ref string) (_ store.Image, err error) {
	defer func() { err = i.Options.explainAuth(err, i.Repo) }()
	r, err := parseRepo(i.Repo, i.Options)
	if err != nil {
		return store.Image{}, fmt.Errorf("resolving image %q: %w", ref, err)
	}
	fail := func(format string, args ...any) (store.Image, error) {
		return store.Image{}, fmt.Errorf("resolving image %q in %s: %w", ref, r, fmt.Errorf(format, args...))
	}
	if ref == "" {
		return fail("no image given: %w", store.ErrNotFound)
	}
	isHex := strings.Trim(ref, "0123456789abcdef") == ""
	var target name.Reference
	byVersion := false
	switch d, err := digest.Parse(ref); {
	case err == nil:
		target = r.Digest(d.String())
	case isHex && len(ref) == digest.SHA256.Size()*2:
		target = r.Digest(digest.NewDigestFromEncoded(digest.SHA256, ref).String())
	case strings.Contains(ref, ":"):
		return fail("%w: not a full digest (a registry cannot look up a digest prefix; use the full sha256:… digest or a version)", store.ErrNotFound)
	default:
		target, byVersion = r.Tag(Tag(ref)), true
	}

	c, err := newClient(ctx, r.Registry, i.Options)
	if err != nil {
		return fail("%w", err)
	}
	desc, err := c.puller.Get(ctx, target)
	switch {
	case isNotFound(err) && byVersion && isHex:
		return fail("%w: no version %s, and a registry cannot look up a digest prefix (use the full sha256:… digest or a version)", store.ErrNotFound, ref)
	case isNotFound(err):
		return fail("%w: no manifest %s", store.ErrNotFound, target)
	case err != nil:
		return fail("manifest %s: %w", target, err)
	}
	img, err := c.remoteImage(ctx, r, desc)
	if err != nil {
		return fail("%w", err)
	}
	if byVersion && img.Config.Version != ref && Tag(img.Config.Version) != ref {
		return fail("%w: tag %s names version %s", store.ErrNotFound, target, img.Config.Version)
	}
	c.log.Debug("resolved image", "ref", ref, "repo", r.String(), "digest", img.Digest(), "version", img.Config.Version)
	return img, nil
}

// remoteImage checks that desc, a manifest just fetched from repo, is an imgctl image as Pull
// does (size, type, the byte-exact form store.PutImage writes) and fetches its config.
func (c *client) remoteImage(ctx context.Context, repo name.Repository, desc *remote.Descriptor) (store.Image, error) {
	mdigest, err := digest.Parse(desc.Digest.String())
	if err != nil {
		return store.Image{}, fmt.Errorf("manifest digest: %w", err)
	}
	if len(desc.Manifest) > maxManifest {
		return store.Image{}, fmt.Errorf("manifest %s: %d bytes, more than %d", mdigest, len(desc.Manifest), maxManifest)
	}
	m, err := checkImgctl(desc.Manifest)
	if err != nil {
		return store.Image{}, fmt.Errorf("manifest %s: %w", mdigest, err)
	}
	cdata, err := c.fetchSmall(ctx, repo, m.Config, maxManifest)
	if err != nil {
		return store.Image{}, fmt.Errorf("image %s: config blob %s: %w", mdigest, m.Config.Digest, err)
	}
	cfg, err := manifest.DecodeConfig(cdata)
	if err != nil {
		return store.Image{}, fmt.Errorf("image %s: config blob %s: %w", mdigest, m.Config.Digest, err)
	}
	rendered, err := manifest.Render(cfg, manifest.Artifacts(m))
	if err != nil {
		return store.Image{}, fmt.Errorf("manifest %s: %w", mdigest, err)
	}
	if rendered.ManifestDescriptor.Digest != mdigest {
		return store.Image{}, fmt.Errorf("manifest %s is not in the form imgctl writes for its config and artifacts (that would be %s)",
			mdigest, rendered.ManifestDescriptor.Digest)
	}
	d := rendered.ManifestDescriptor
	d.Annotations = map[string]string{
		manifest.AnnotationRefName: cfg.Version,
		manifest.AnnotationName:    cfg.Name,
	}
	return store.Image{Descriptor: d, Manifest: m, Config: cfg}, nil
}

// Check implements channel.Images: the image's manifest and every blob it references (config
// and artifacts) must be in the repository with the sizes the manifest gives (HEAD requests);
// the config is fetched and its digest verified too. The error names the first bad blob (with
// its title) and wraps store.ErrNotFound or store.ErrDigestMismatch.
func (i *Images) Check(ctx context.Context, img store.Image) (err error) {
	defer func() { err = i.Options.explainAuth(err, i.Repo) }()
	r, err := parseRepo(i.Repo, i.Options)
	if err != nil {
		return fmt.Errorf("checking image %s: %w", img.Digest(), err)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("checking image %s in %s: %w", describeImage(img), r, fmt.Errorf(format, args...))
	}
	if err := img.Digest().Validate(); err != nil {
		return fail("%w", err)
	}
	c, err := newClient(ctx, r.Registry, i.Options)
	if err != nil {
		return fail("%w", err)
	}
	switch head, err := c.puller.Head(ctx, r.Digest(img.Digest().String())); {
	case isNotFound(err):
		return fail("manifest %s is missing: %w", img.Digest(), store.ErrNotFound)
	case err != nil:
		return fail("manifest %s: %w", img.Digest(), err)
	case head.Size != img.Descriptor.Size:
		return fail("manifest %s: %d bytes in the registry, expected %d: %w", img.Digest(), head.Size, img.Descriptor.Size, store.ErrDigestMismatch)
	}

	type blob struct {
		what string
		desc ocispec.Descriptor
	}
	blobs := []blob{{"config", img.Manifest.Config}}
	for _, a := range img.Manifest.Layers {
		blobs = append(blobs, blob{fmt.Sprintf("artifact %q", a.Annotations[manifest.AnnotationTitle]), a})
	}
	err = forEach(ctx, c.jobs, len(blobs), func(ctx context.Context, n int) error {
		b := blobs[n]
		if err := b.desc.Digest.Validate(); err != nil {
			return fmt.Errorf("%s: blob %q: %w", b.what, b.desc.Digest, err)
		}
		if n == 0 { // the config: small, so fetch it and verify its digest
			err := c.verifyBlob(ctx, r, b.desc)
			switch {
			case isNotFound(err):
				return fmt.Errorf("%s: blob %s is missing: %w", b.what, b.desc.Digest, store.ErrNotFound)
			case err != nil:
				return fmt.Errorf("%s: blob %s: %w", b.what, b.desc.Digest, err)
			}
			return nil
		}
		l, err := c.puller.Layer(ctx, r.Digest(b.desc.Digest.String()))
		if err != nil {
			return fmt.Errorf("%s: blob %s: %w", b.what, b.desc.Digest, err)
		}
		size, err := l.Size() // a HEAD request
		switch {
		case isNotFound(err):
			return fmt.Errorf("%s: blob %s is missing: %w", b.what, b.desc.Digest, store.ErrNotFound)
		case err != nil:
			return fmt.Errorf("%s: blob %s: %w", b.what, b.desc.Digest, err)
		case size < 0:
			c.log.Warn("registry did not report a blob's size", "repo", r.String(), "blob", b.desc.Digest, "name", b.what)
		case size != b.desc.Size:
			return fmt.Errorf("%s: blob %s: %d bytes in the registry, the manifest says %d: %w", b.what, b.desc.Digest, size, b.desc.Size, store.ErrDigestMismatch)
		}
		return nil
	})
	if err != nil {
		return fail("%w", err)
	}
	c.log.Debug("image is whole in the registry", "repo", r.String(), "image", img.Digest(), "blobs", len(blobs))
	return nil
}

// verifyBlob reads blob desc of repo and checks its size and digest; a mismatch wraps
// store.ErrDigestMismatch.
func (c *client) verifyBlob(ctx context.Context, repo name.Repository, desc ocispec.Descriptor) error {
	if desc.Size > maxManifest || desc.Size < 0 {
		return fmt.Errorf("%d bytes, limit %d", desc.Size, maxManifest)
	}
	rb := &remoteBlob{want: desc.Digest, size: desc.Size, open: func() (io.ReadCloser, error) {
		return c.openBlob(ctx, repo, desc.Digest)
	}}
	defer rb.Close()
	n, err := io.Copy(io.Discard, rb)
	if err != nil {
		return err
	}
	if n != desc.Size {
		return fmt.Errorf("%d bytes in the registry, the manifest says %d: %w", n, desc.Size, store.ErrDigestMismatch)
	}
	return nil
}

// Hold implements channel.Images. A registry has no lock that keeps an image from being
// deleted, so Hold just runs fn.
func (i *Images) Hold(ctx context.Context, img store.Image, fn func() error) error {
	return fn()
}

// describeImage names an image for messages: digest and version.
func describeImage(img store.Image) string {
	if img.Config.Version == "" {
		return img.Digest().String()
	}
	return fmt.Sprintf("%s (%s)", img.Digest(), img.Config.Version)
}
