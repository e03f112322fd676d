package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// historySuffix makes the tag of a channel's history from the channel's name.
const historySuffix = ".history"

// maxHistory bounds a channel history blob (some 40,000 entries).
const maxHistory = 16 << 20

// AnnotationChannel names the channel on a history artifact manifest.
const AnnotationChannel = "dev.imgctl.channel"

// historyTitle is the file name of the history blob (org.opencontainers.image.title).
const historyTitle = "history.json"

// channelTags returns the tags of channel ch: CH and CH.history.
func channelTags(r name.Repository, ch string) (name.Tag, name.Tag, error) {
	if !tagRE.MatchString(ch + historySuffix) {
		return name.Tag{}, name.Tag{}, fmt.Errorf("channel %q: not usable as a registry tag (want [A-Za-z0-9_][A-Za-z0-9._-]*, at most %d characters)",
			ch, 128-len(historySuffix))
	}
	return r.Tag(ch), r.Tag(ch + historySuffix), nil
}

// PushChannel publishes h, the whole history of channel h.Channel, to repo (REGISTRY/REPOSITORY)
// and points tag CH at h's head image, which must already be in repo (Push it first).
//
// Registries cannot compare-and-swap a tag, so PushChannel does what the protocol allows:
//
//  1. It reads the registry's current history (tag CH.history) and requires h to extend it:
//     the registry's entries must be the first entries of h, and the first new entry's From
//     (for one new entry: h's last entry's From) must be the registry's head. Otherwise the
//     error wraps channel.ErrConflict: another writer moved the channel since the caller read
//     it. With no history in the registry, a tag CH (not made by PushChannel) must name
//     h's first From, or it is a conflict too.
//  2. It writes the new history artifact (subject: the new head) and tags it CH.history.
//  3. It reads CH.history back: if another writer's history replaced ours meanwhile, the error
//     wraps channel.ErrConflict and the CH tag is left alone.
//  4. It moves tag CH to the new head.
//
// The history is the record and is written first: a push that dies between steps 2 and 4
// leaves CH.history one move ahead of tag CH, and calling PushChannel again with the same h
// completes it (pushing a history the registry already has only moves the tag). PullChannel
// reports such a lag.
//
// The race that remains: two writers A and B that both read the same history in step 1,
// where B's step 2 lands after A's step 3 but B read before A's step 2. Then B overwrites A's
// history without either noticing: A's entry is lost from CH.history, both calls succeed, and
// tag CH ends at whichever step 4 ran last (so it may disagree with CH.history until the next
// push). The window is B's time between steps 1 and 2 (a few round trips); to close it,
// writers must serialize outside the registry (one promotion job at a time).
//
// Each history manifest stays in the registry as a referrer of its head image, so a lost
// entry can be recovered by hand: registries with the OCI 1.1 Referrers API index it
// themselves; on others go-containerregistry adds it to the image index tagged
// sha256-<head hex> (the spec's fallback), which PushChannel does not prune.
func PushChannel(ctx context.Context, repo string, h channel.History, o Options) (err error) {
	defer func() { err = o.explainAuth(err, repo) }()
	r, err := parseRepo(repo, o)
	if err != nil {
		return fmt.Errorf("pushing channel %q: %w", h.Channel, err)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("pushing channel %s to %s: %w", h.Channel, r, fmt.Errorf(format, args...))
	}
	chTag, histTag, err := channelTags(r, h.Channel)
	if err != nil {
		return fail("%w", err)
	}
	if h.SchemaVersion != 1 {
		return fail("history schemaVersion %d, want 1", h.SchemaVersion)
	}
	if len(h.Entries) == 0 {
		return fail("history has no entries")
	}
	head := h.Head()
	if err := head.Validate(); err != nil {
		return fail("head %q: %w", head, err)
	}
	c, err := newClient(ctx, r.Registry, o)
	if err != nil {
		return fail("%w", err)
	}
	log := c.log.With("channel", h.Channel, "repo", r.String(), "head", head)

	headImg, err := c.puller.Get(ctx, r.Digest(head.String()))
	if isNotFound(err) {
		return fail("image %s is not in the repository (push it first): %w", head, store.ErrNotFound)
	}
	if err != nil {
		return fail("image %s: %w", head, err)
	}

	cur, curDigest, err := c.readHistory(ctx, histTag, h.Channel)
	if err != nil {
		return fail("%w", err)
	}
	if curDigest != "" && entriesEqual(cur.Entries, h.Entries) {
		log.Info("registry already has this history; making sure the channel tag follows it")
	} else {
		if err := checkExtends(cur, h); err != nil {
			return fail("%w", err)
		}
		if curDigest == "" {
			if err := c.checkUnmanagedTag(ctx, chTag, h.Entries[0].From); err != nil {
				return fail("%w", err)
			}
		}
		d, err := c.writeHistory(ctx, r, histTag, h, headImg)
		if err != nil {
			return fail("history: %w", err)
		}
		back, err := c.puller.Head(ctx, histTag)
		if err != nil {
			return fail("reading back %s: %w", histTag, err)
		}
		if back.Digest.String() != d.String() {
			return fail("%s was replaced by %s while it was written (another writer): %w", histTag, back.Digest, channel.ErrConflict)
		}
		log.Info("wrote channel history", "history", d, "entries", len(h.Entries))
	}

	now, err := c.puller.Head(ctx, chTag)
	switch {
	case err == nil && now.Digest.String() == head.String():
		log.Info("channel tag already at head")
		return nil
	case err != nil && !isNotFound(err):
		return fail("reading %s: %w", chTag, err)
	}
	if err := c.pusher.Put(ctx, chTag, rawManifest{raw: headImg.Manifest, mediaType: headImg.MediaType}); err != nil {
		return fail("moving %s to %s: %w", chTag, head, err)
	}
	log.Info("moved channel tag")
	return nil
}

// checkExtends returns an error wrapping channel.ErrConflict unless h appends entries to cur.
func checkExtends(cur, h channel.History) error {
	n := len(cur.Entries)
	if n >= len(h.Entries) {
		return fmt.Errorf("the registry's history has %d entries and its head is %s; this history (%d entries, moving the channel from %q to %s) does not extend it: %w",
			n, cur.Head(), len(h.Entries), h.Entries[len(h.Entries)-1].From, h.Head(), channel.ErrConflict)
	}
	for i := range n {
		if !entryEqual(cur.Entries[i], h.Entries[i]) {
			return fmt.Errorf("history differs from the registry's at entry %d (seq %d): %w", i, cur.Entries[i].Seq, channel.ErrConflict)
		}
	}
	if from := h.Entries[n].From; from != cur.Head() {
		return fmt.Errorf("channel head in the registry is %q, but the change moves it from %q: %w", cur.Head(), from, channel.ErrConflict)
	}
	return nil
}

// checkUnmanagedTag: with no history in the registry, a tag CH that exists must be the head
// the caller expects, or pushing would clobber something PushChannel never wrote.
func (c *client) checkUnmanagedTag(ctx context.Context, chTag name.Tag, from digest.Digest) error {
	d, err := c.puller.Head(ctx, chTag)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", chTag, err)
	}
	if d.Digest.String() != from.String() {
		return fmt.Errorf("tag %s names %s but has no channel history, and the change moves it from %q: %w", chTag, d.Digest, from, channel.ErrConflict)
	}
	return nil
}

func entryEqual(a, b channel.Entry) bool {
	aj, err1 := json.Marshal(a)
	bj, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(aj, bj)
}

func entriesEqual(a, b []channel.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !entryEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

// writeHistory uploads h as an artifact manifest whose subject is the head image, tags it
// histTag, and returns its digest.
func (c *client) writeHistory(ctx context.Context, r name.Repository, histTag name.Tag, h channel.History, headImg *remote.Descriptor) (digest.Digest, error) {
	hj, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("encoding: %w", err)
	}
	last := h.Entries[len(h.Entries)-1]
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: channel.HistoryArtifactType,
		Config:       ocispec.DescriptorEmptyJSON,
		Layers: []ocispec.Descriptor{{
			MediaType:   channel.HistoryMediaType,
			Digest:      digest.FromBytes(hj),
			Size:        int64(len(hj)),
			Annotations: map[string]string{ocispec.AnnotationTitle: historyTitle},
		}},
		Subject: &ocispec.Descriptor{
			MediaType:    string(headImg.MediaType),
			ArtifactType: headImg.ArtifactType,
			Digest:       h.Head(),
			Size:         headImg.Size,
		},
		Annotations: map[string]string{
			AnnotationChannel:         h.Channel,
			ocispec.AnnotationCreated: last.When.UTC().Format(time.RFC3339),
		},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encoding manifest: %w", err)
	}
	for _, b := range []struct {
		data []byte
		mt   string
	}{{[]byte("{}"), ocispec.MediaTypeEmptyJSON}, {hj, channel.HistoryMediaType}} {
		if err := c.pusher.Upload(ctx, r, static.NewLayer(b.data, types.MediaType(b.mt))); err != nil {
			return "", fmt.Errorf("blob %s: %w", digest.FromBytes(b.data), err)
		}
	}
	if err := c.pusher.Put(ctx, histTag, rawManifest{raw: raw, mediaType: types.MediaType(m.MediaType)}); err != nil {
		return "", fmt.Errorf("manifest %s: %w", digest.FromBytes(raw), err)
	}
	return digest.FromBytes(raw), nil
}

// readHistory reads the history tagged histTag; an absent tag is an empty history and an empty
// digest.
func (c *client) readHistory(ctx context.Context, histTag name.Tag, ch string) (channel.History, digest.Digest, error) {
	desc, err := c.puller.Get(ctx, histTag)
	if isNotFound(err) {
		return channel.History{SchemaVersion: 1, Channel: ch}, "", nil
	}
	if err != nil {
		return channel.History{}, "", fmt.Errorf("reading %s: %w", histTag, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return channel.History{}, "", fmt.Errorf("%s: manifest %s: %w", histTag, desc.Digest, err)
	}
	if m.ArtifactType != channel.HistoryArtifactType {
		var probe struct {
			Manifests []json.RawMessage `json:"manifests"`
		}
		_ = json.Unmarshal(desc.Manifest, &probe)
		return channel.History{}, "", fmt.Errorf("%s is not a channel history: it is %s: %w",
			histTag, describe(m.MediaType, m.ArtifactType, m.Config.MediaType, probe.Manifests != nil), ErrNotImgctl)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != channel.HistoryMediaType {
		return channel.History{}, "", fmt.Errorf("%s: manifest %s: want one blob of media type %s", histTag, desc.Digest, channel.HistoryMediaType)
	}
	data, err := c.fetchSmall(ctx, histTag.Context(), m.Layers[0], maxHistory)
	if err != nil {
		return channel.History{}, "", fmt.Errorf("%s: blob %s: %w", histTag, m.Layers[0].Digest, err)
	}
	var h channel.History
	if err := json.Unmarshal(data, &h); err != nil {
		return channel.History{}, "", fmt.Errorf("%s: blob %s: %w", histTag, m.Layers[0].Digest, err)
	}
	// The same invariants as a local history (Seq contiguous, From = previous To), for every
	// reader: push's prefix check, pull's tag check and the registry channel backend.
	if err := h.Check(ch); err != nil {
		return channel.History{}, "", fmt.Errorf("%s: blob %s: %w", histTag, m.Layers[0].Digest, err)
	}
	d, err := digest.Parse(desc.Digest.String())
	if err != nil {
		return channel.History{}, "", fmt.Errorf("%s: %w", histTag, err)
	}
	return h, d, nil
}

// PullChannel reads the history of channel ch from repo (REGISTRY/REPOSITORY). A channel that
// was never pushed is an error wrapping channel.ErrEmpty. The history is the record: if tag CH
// does not point at its head (a PushChannel died before moving the tag, or lost the race its
// doc describes), PullChannel logs a warning and still returns the history; the next
// PushChannel moves the tag.
func PullChannel(ctx context.Context, repo, ch string, o Options) (_ channel.History, err error) {
	defer func() { err = o.explainAuth(err, repo) }()
	r, err := parseRepo(repo, o)
	if err != nil {
		return channel.History{}, fmt.Errorf("pulling channel %q: %w", ch, err)
	}
	fail := func(format string, args ...any) (channel.History, error) {
		return channel.History{}, fmt.Errorf("pulling channel %s from %s: %w", ch, r, fmt.Errorf(format, args...))
	}
	chTag, histTag, err := channelTags(r, ch)
	if err != nil {
		return fail("%w", err)
	}
	c, err := newClient(ctx, r.Registry, o)
	if err != nil {
		return fail("%w", err)
	}
	h, d, err := c.readHistory(ctx, histTag, ch)
	if err != nil {
		return fail("%w", err)
	}
	if d == "" {
		return fail("no %s tag: %w", histTag.TagStr(), channel.ErrEmpty)
	}
	log := c.log.With("channel", ch, "repo", r.String(), "history", d)
	switch now, err := c.puller.Head(ctx, chTag); {
	case err == nil && now.Digest.String() == h.Head().String():
	case err == nil:
		log.Warn("channel tag does not point at the history's head (an interrupted or racing push); the history is authoritative",
			"tag", now.Digest, "head", h.Head())
	case isNotFound(err):
		log.Warn("channel tag is missing (an interrupted push); the history is authoritative", "head", h.Head())
	default:
		return fail("reading %s: %w", chTag, err)
	}
	log.Debug("pulled channel history", "entries", len(h.Entries), "head", h.Head())
	return h, nil
}
