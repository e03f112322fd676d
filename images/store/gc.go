package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/layers/atomicfile"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// gcGrace is how long GC spares an unreferenced blob after its file was last written, linked
// or reused (its mtime): a build writes its blobs first and indexes its image last.
const gcGrace = time.Hour

// gcTrashPrefix names the files in ingest/ to which GC moves a blob before removing it.
const gcTrashPrefix = "gc-"

// GCOptions says which images GC keeps. An imgctl image is deleted only if it is not in Roots,
// not among the KeepNewest newest others, and older than OlderThan.
type GCOptions struct {
	// Roots are image manifests that must be kept: the channels' heads and the history
	// entries the retention policy keeps (see RootsFromHistories).
	Roots []digest.Digest
	// RootsFunc, if set, adds roots read while GC holds the store lock. Channel moves happen
	// under the same lock (Store.Holding), so roots read here cannot miss a promotion made
	// between reading them and deleting.
	RootsFunc func() ([]digest.Digest, error)
	// KeepNewest also keeps the KeepNewest newest images not in Roots, in List order
	// (SourceDateEpoch, newest first, then version). 0 keeps none.
	KeepNewest int
	// OlderThan, if not 0, keeps every image whose SourceDateEpoch or storing (its manifest
	// blob's mtime) lies less than OlderThan before Now: an old commit rebuilt today is new.
	OlderThan time.Duration
	// DryRun reports what GC would delete, and deletes nothing.
	DryRun bool
	// Now is the clock (time.Now if nil).
	Now func() time.Time

	// grace replaces gcGrace when positive (tests).
	grace time.Duration
}

// GCReport is what GC deleted (or, with DryRun, would delete).
type GCReport struct {
	// DeletedImages are the imgctl images removed from index.json, in List order.
	DeletedImages []Image
	// DeletedReferrers are index entries of other tools removed because their subject was a
	// deleted image (a signature or an SBOM of it).
	DeletedReferrers []ocispec.Descriptor
	// DeletedBlobs are the blobs removed, sorted.
	DeletedBlobs []digest.Digest
	// FreedBytes is the size of DeletedBlobs (less is freed on disk for a blob that is also
	// hard-linked elsewhere, e.g. from a build cache).
	FreedBytes int64
	// KeptImages is the number of imgctl images left in index.json.
	KeptImages int
	// YoungBlobs is the number of unreferenced blobs kept because they were written or used
	// within the last hour: they may belong to a build that has not indexed its image yet.
	YoungBlobs int
}

// GC deletes the imgctl images nothing needs, then every blob index.json no longer reaches.
//
// An imgctl image is deleted when it is not in o.Roots, not among the o.KeepNewest newest
// others, and older than o.OlderThan (see GCOptions). Index entries of other tools are kept,
// except referrers (signatures, SBOMs) whose subject is a deleted image, which go with it
// unless they are in Roots.
//
// A blob is kept if the remaining index entries or the roots reach it: through the config,
// layers and subject of a manifest and the manifests of an index, recursively, in the OCI and
// Docker formats. So is any blob written, linked or reused (see TouchBlob) within the last
// hour, which may belong to a build that has not indexed its image yet. ingest/ and blobs of
// other algorithms than sha256 are left alone.
//
// Everything happens under the index lock: the decision, the atomic rewrite of index.json, then
// the removal of blobs. PutImage checks under the same lock that its blobs exist, so no image
// is ever indexed without a blob GC removed. If a manifest GC must read is corrupt, GC deletes
// nothing and says which; a missing one is logged and cannot keep what it named. Nor does it
// delete anything when index.json is missing or unreadable, or lists nothing while blobs/
// holds manifests older than the index (the index was lost or replaced: see Verify).
//
// With o.DryRun nothing changes and the report says what GC would delete. An error leaves the
// store unchanged, unless it comes from removing blobs: index.json has been rewritten then, and
// the next GC removes the rest.
func (s *Store) GC(ctx context.Context, o GCOptions) (GCReport, error) {
	if o.KeepNewest < 0 || o.OlderThan < 0 {
		return GCReport{}, fmt.Errorf("garbage collection: KeepNewest %d and OlderThan %s must not be negative", o.KeepNewest, o.OlderThan)
	}
	roots := make(map[digest.Digest]bool, len(o.Roots))
	for _, r := range o.Roots {
		if err := r.Validate(); err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: root %q: %w", r, err)
		}
		roots[r] = true
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	grace := gcGrace
	if o.grace > 0 {
		grace = o.grace
	}

	unlock, err := s.lock(ctx)
	if err != nil {
		return GCReport{}, fmt.Errorf("garbage collection: %w", err)
	}
	defer unlock()
	if o.RootsFunc != nil {
		more, err := o.RootsFunc()
		if err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: reading roots: %w", err)
		}
		for _, r := range more {
			if err := r.Validate(); err != nil {
				return GCReport{}, fmt.Errorf("garbage collection: root %q: %w", r, err)
			}
			roots[r] = true
		}
		o.Roots = append(slices.Clip(o.Roots), more...)
	}
	t := now()
	young := t.Add(-grace) // a file modified at or after young is spared
	g := &collector{s: s, docs: map[digest.Digest]*gcDoc{}, reach: map[digest.Digest]bool{}}

	idx, err := s.readIndex()
	if err != nil {
		return GCReport{}, fmt.Errorf("garbage collection: %w; nothing was deleted", s.lostIndex(err))
	}
	entries, err := g.classify(ctx, idx)
	if err != nil {
		return GCReport{}, fmt.Errorf("garbage collection: %w", err)
	}
	var rep GCReport
	drop := g.choose(entries, o, roots, t, &rep)
	kept := make([]ocispec.Descriptor, 0, len(idx.Manifests))
	for _, desc := range idx.Manifests {
		if !drop[desc.Digest] {
			kept = append(kept, desc)
		}
	}
	for _, desc := range kept {
		if err := g.mark(ctx, desc, false); err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: %w", err)
		}
	}
	for _, r := range o.Roots {
		if g.reach[r] {
			continue
		}
		if !s.HasBlob(r) {
			s.log.Warn("garbage collection: a root is not in the store", "digest", r)
			continue
		}
		if err := g.mark(ctx, ocispec.Descriptor{Digest: r, Size: -1}, true); err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: root %s: %w", r, err)
		}
	}
	garbage, err := g.scan(ctx, young, &rep)
	if err != nil {
		return GCReport{}, fmt.Errorf("garbage collection: %w", err)
	}
	if len(idx.Manifests) == 0 && len(garbage) > 0 {
		// An empty index while blobs hold old manifests: the index was lost, not emptied by GC.
		ds := make([]digest.Digest, len(garbage))
		sizes := make(map[digest.Digest]int64, len(garbage))
		for i, b := range garbage {
			ds[i], sizes[b.d] = b.d, b.size
		}
		if ms := s.lostManifests(ds, sizes); len(ms) > 0 {
			return GCReport{}, fmt.Errorf("garbage collection: %s %s; nothing was deleted (run `imgctl store verify`)",
				s.path(indexFile), lostImages(s, ms))
		}
	}

	for _, img := range rep.DeletedImages {
		s.log.Info("garbage collection: deleting image", "name", img.Config.Name, "version", img.Config.Version,
			"digest", img.Digest(), "created", img.Config.Created(), "dryRun", o.DryRun)
	}
	for _, desc := range rep.DeletedReferrers {
		s.log.Info("garbage collection: deleting referrer of a deleted image", "digest", desc.Digest,
			"artifactType", desc.ArtifactType, "dryRun", o.DryRun)
	}
	if o.DryRun {
		for _, b := range garbage {
			rep.DeletedBlobs = append(rep.DeletedBlobs, b.d)
			rep.FreedBytes += b.size
		}
		s.log.Info("garbage collection: done", "images", len(rep.DeletedImages), "blobs", len(rep.DeletedBlobs),
			"bytes", rep.FreedBytes, "keptImages", rep.KeptImages, "youngBlobs", rep.YoungBlobs, "dryRun", true)
		return rep, nil
	}

	if len(kept) != len(idx.Manifests) {
		if err := ctx.Err(); err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: %w", err)
		}
		idx.Manifests = kept
		if err := s.writeIndex(idx); err != nil {
			return GCReport{}, fmt.Errorf("garbage collection: %w", err)
		}
	}
	err = g.remove(ctx, garbage, young, &rep)
	s.log.Info("garbage collection: done", "images", len(rep.DeletedImages), "blobs", len(rep.DeletedBlobs),
		"bytes", rep.FreedBytes, "keptImages", rep.KeptImages, "youngBlobs", rep.YoungBlobs, "dryRun", false)
	if err != nil {
		return rep, fmt.Errorf("garbage collection: %w", err)
	}
	return rep, nil
}

// TouchBlob marks blob d as just used, so that GC spares it for an hour even if no image
// references it: call it when building on a blob found in the store (HasBlob) rather than
// written. WriteBlob, LinkBlob and AddFile do it themselves when the blob is already there. It
// returns an error wrapping ErrNotFound if the store does not hold d.
func (s *Store) TouchBlob(d digest.Digest) error {
	p, err := s.blobPath(d)
	if err != nil {
		return err
	}
	now := time.Now()
	err = os.Chtimes(p, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		// Typically a blob another user owns: it is there, GC's grace just cannot cover it.
		if _, serr := os.Stat(p); serr != nil {
			return fmt.Errorf("blob %s: %w", d, ErrNotFound)
		}
		s.log.Debug("cannot refresh blob's modification time", "digest", d, "err", err)
	}
	return nil
}

// HistoryRefs is what GC needs of a channel's history: the image each entry moved the channel
// to (channel.Entry.To), oldest first, so that the last is the channel's head.
type HistoryRefs struct {
	Channel string
	To      []digest.Digest
}

// RootsFromHistories returns the roots for GCOptions.Roots that keep, for each channel, its
// head and the keepHistory most recent other images it pointed to before (the rollback
// targets), or all of them if keepHistory < 0. The result is sorted and free of duplicates. An
// entry that is not a valid digest is an error: a history GC cannot read must not let it
// delete what the history names.
func RootsFromHistories(hs []HistoryRefs, keepHistory int) ([]digest.Digest, error) {
	set := map[digest.Digest]bool{}
	for _, h := range hs {
		for i, d := range h.To {
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("channel %s: history entry %d: image %q: %w", h.Channel, i+1, d, err)
			}
		}
		if len(h.To) == 0 {
			continue
		}
		head := h.To[len(h.To)-1]
		set[head] = true
		seen := map[digest.Digest]bool{head: true}
		for i := len(h.To) - 2; i >= 0 && (keepHistory < 0 || len(seen) <= keepHistory); i-- {
			if d := h.To[i]; !seen[d] {
				seen[d] = true
				set[d] = true
			}
		}
	}
	out := make([]digest.Digest, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

// collector is the state of one GC.
type collector struct {
	s     *Store
	docs  map[digest.Digest]*gcDoc // manifests read; nil for one that is missing
	reach map[digest.Digest]bool   // blobs to keep
}

// gcDoc is every field, in the manifest and index formats GC knows, that names other blobs: OCI
// image index and manifest (and the artifact manifest draft's blobs), Docker manifest list and
// schema 2 manifest, and Docker schema 1 fsLayers.
type gcDoc struct {
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Blobs     []ocispec.Descriptor `json:"blobs"`
	Manifests []ocispec.Descriptor `json:"manifests"`
	Subject   *ocispec.Descriptor  `json:"subject"`
	FSLayers  []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers"`
}

// gcManifestTypes are the media types GC must be able to read to know what they reference: it
// stops rather than guess if one is corrupt. Any other blob named as a manifest is read if it
// is small JSON, and otherwise taken to reference nothing.
var gcManifestTypes = map[string]bool{
	ocispec.MediaTypeImageIndex:                                 true,
	ocispec.MediaTypeImageManifest:                              true,
	"application/vnd.oci.artifact.manifest.v1+json":             true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
}

// doc reads the manifest or index desc names. It returns nil if the blob is missing.
func (g *collector) doc(ctx context.Context, desc ocispec.Descriptor) (*gcDoc, error) {
	if doc, ok := g.docs[desc.Digest]; ok {
		return doc, nil
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("manifest %q: %w", desc.Digest, err)
	}
	if desc.Digest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("manifest %s: unsupported digest algorithm (garbage collection understands sha256 layouts only)", desc.Digest)
	}
	strict := gcManifestTypes[desc.MediaType]
	doc := &gcDoc{}
	if !strict && desc.Size > maxMetaBlob {
		g.docs[desc.Digest] = doc
		return doc, nil
	}
	data, err := g.s.readBlob(ctx, desc.Digest, -1, maxMetaBlob)
	switch {
	case errors.Is(err, ErrNotFound):
		g.docs[desc.Digest] = nil
		return nil, nil
	case err != nil && (strict || ctx.Err() != nil):
		return nil, fmt.Errorf("manifest %s (%s): %w (nothing was deleted; run `imgctl store verify`)", desc.Digest, desc.MediaType, err)
	case err != nil:
		g.s.log.Debug("garbage collection: unreadable blob of unknown type named as a manifest", "digest", desc.Digest, "mediaType", desc.MediaType, "err", err)
	default:
		// For an unknown media type, whatever decodes is kept: keeping more is safe.
		if err := json.Unmarshal(data, doc); err != nil && strict {
			return nil, fmt.Errorf("manifest %s (%s): %w (nothing was deleted; run `imgctl store verify`)", desc.Digest, desc.MediaType, err)
		}
	}
	g.docs[desc.Digest] = doc
	return doc, nil
}

// gcEntry is one distinct manifest of index.json.
type gcEntry struct {
	desc   ocispec.Descriptor
	ours   bool // an imgctl image manifest
	loaded bool // img is valid
	img    Image
	stored time.Time // the manifest blob's mtime
}

// classify reads every manifest index.json names.
func (g *collector) classify(ctx context.Context, idx ocispec.Index) ([]*gcEntry, error) {
	seen := make(map[digest.Digest]bool, len(idx.Manifests))
	var out []*gcEntry
	for _, desc := range idx.Manifests {
		if seen[desc.Digest] {
			continue
		}
		seen[desc.Digest] = true
		e := &gcEntry{desc: desc}
		out = append(out, e)
		doc, err := g.doc(ctx, desc)
		if err != nil {
			return nil, err
		}
		if doc == nil || desc.MediaType != ocispec.MediaTypeImageManifest || doc.Config == nil ||
			doc.Config.MediaType != manifest.ConfigMediaType {
			continue
		}
		e.ours = true
		img, ok, err := g.s.loadImage(ctx, desc)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err != nil || !ok {
			g.s.log.Warn("garbage collection: keeping an image it cannot read", "digest", desc.Digest, "err", err)
			continue
		}
		p, _ := g.s.blobPath(desc.Digest)
		fi, err := os.Stat(p)
		if err != nil {
			g.s.log.Warn("garbage collection: keeping an image it cannot read", "digest", desc.Digest, "err", err)
			continue
		}
		e.img, e.loaded, e.stored = img, true, fi.ModTime()
	}
	return out, nil
}

// choose returns the digests of the index entries to drop, and records them in rep.
func (g *collector) choose(entries []*gcEntry, o GCOptions, roots map[digest.Digest]bool, now time.Time, rep *GCReport) map[digest.Digest]bool {
	var cands []*gcEntry
	for _, e := range entries {
		if e.ours && e.loaded && !roots[e.desc.Digest] {
			cands = append(cands, e)
		}
	}
	slices.SortFunc(cands, func(a, b *gcEntry) int { return compareImages(a.img, b.img) })
	drop := map[digest.Digest]bool{}
	for i, e := range cands {
		if i < o.KeepNewest {
			continue
		}
		if o.OlderThan > 0 {
			cutoff := now.Add(-o.OlderThan)
			if !e.img.Config.Created().Before(cutoff) || !e.stored.Before(cutoff) {
				continue
			}
		}
		drop[e.desc.Digest] = true
		rep.DeletedImages = append(rep.DeletedImages, e.img)
	}
	// Referrers of what goes, and referrers of those.
	for more := len(drop) > 0; more; {
		more = false
		for _, e := range entries {
			d := e.desc.Digest
			if doc := g.docs[d]; !e.ours && !drop[d] && !roots[d] && doc != nil && doc.Subject != nil && drop[doc.Subject.Digest] {
				drop[d], more = true, true
				rep.DeletedReferrers = append(rep.DeletedReferrers, e.desc)
			}
		}
	}
	for _, e := range entries {
		if e.ours && !drop[e.desc.Digest] {
			rep.KeptImages++
		}
	}
	return drop
}

// compareImages is List's order: newest SourceDateEpoch first, then version and digest.
func compareImages(a, b Image) int {
	return cmp.Or(
		cmp.Compare(b.Config.SourceDateEpoch, a.Config.SourceDateEpoch),
		cmp.Compare(a.Config.Version, b.Config.Version),
		cmp.Compare(a.Descriptor.Digest, b.Descriptor.Digest),
	)
}

// mark marks desc, named as a manifest or index, and everything it reaches. A missing blob is
// logged unless optional (a subject need not be in the layout).
func (g *collector) mark(ctx context.Context, desc ocispec.Descriptor, optional bool) error {
	if g.reach[desc.Digest] {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	doc, err := g.doc(ctx, desc)
	if err != nil {
		return err
	}
	g.reach[desc.Digest] = true
	if doc == nil {
		if !optional {
			g.s.log.Warn("garbage collection: a manifest is missing, so the blobs it names are unknown", "digest", desc.Digest, "mediaType", desc.MediaType)
		}
		return nil
	}
	if doc.Config != nil {
		g.reach[doc.Config.Digest] = true
	}
	for _, l := range doc.Layers {
		g.reach[l.Digest] = true
	}
	for _, b := range doc.Blobs {
		g.reach[b.Digest] = true
	}
	for _, l := range doc.FSLayers {
		g.reach[l.BlobSum] = true
	}
	for _, m := range doc.Manifests {
		if err := g.mark(ctx, m, false); err != nil {
			return err
		}
	}
	if doc.Subject != nil {
		return g.mark(ctx, *doc.Subject, true)
	}
	return nil
}

// gcBlob is a blob to remove.
type gcBlob struct {
	d    digest.Digest
	size int64
}

// scan lists the sha256 blobs nothing reaches that were last modified before young.
func (g *collector) scan(ctx context.Context, young time.Time, rep *GCReport) ([]gcBlob, error) {
	entries, err := os.ReadDir(g.s.path(blobsDir, string(digest.SHA256)))
	if err != nil {
		return nil, fmt.Errorf("listing blobs: %w", err)
	}
	var out []gcBlob
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if g.reach[d] || d.Validate() != nil || !e.Type().IsRegular() {
			continue // kept, or not a blob (another tool's temporary file, say)
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing blobs: %w", err)
		}
		if !fi.ModTime().Before(young) {
			rep.YoungBlobs++
			g.s.log.Debug("garbage collection: sparing a young unreferenced blob", "digest", d, "modified", fi.ModTime())
			continue
		}
		out = append(out, gcBlob{d, fi.Size()})
	}
	return out, nil
}

// remove removes the blobs and records them in rep.
func (g *collector) remove(ctx context.Context, blobs []gcBlob, young time.Time, rep *GCReport) error {
	defer func() {
		if len(rep.DeletedBlobs) > 0 {
			if err := atomicfile.SyncDir(g.s.path(blobsDir, string(digest.SHA256))); err != nil {
				g.s.log.Warn("garbage collection: syncing the blobs directory", "err", err)
			}
		}
	}()
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		removed, err := g.s.removeBlob(b.d, young)
		if err != nil {
			return err
		}
		if removed {
			rep.DeletedBlobs = append(rep.DeletedBlobs, b.d)
			rep.FreedBytes += b.size
			g.s.log.Debug("garbage collection: removed blob", "digest", b.d, "size", b.size)
		}
	}
	return nil
}

// removeBlob removes blob d unless it was modified at or after young. Writers that reuse a
// blob touch it (TouchBlob) without the lock, so a blob may turn young after scan looked: it is
// first renamed away (after which a touch fails, and the writer writes the blob anew), then
// checked, then removed or put back.
func (s *Store) removeBlob(d digest.Digest, young time.Time) (bool, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return false, err
	}
	trash := s.path(ingestDir, gcTrashPrefix+d.Encoded())
	if err := os.Rename(p, trash); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("removing blob %s: %w", d, err)
	}
	fi, err := os.Stat(trash)
	if err != nil {
		return false, fmt.Errorf("removing blob %s: %w", d, err)
	}
	if !fi.ModTime().Before(young) {
		if err := os.Rename(trash, p); err != nil {
			return false, fmt.Errorf("putting back blob %s, used meanwhile: %w", d, err)
		}
		s.log.Debug("garbage collection: sparing a blob used meanwhile", "digest", d)
		return false, nil
	}
	if err := os.Remove(trash); err != nil {
		return false, fmt.Errorf("removing blob %s: %w", d, err)
	}
	return true, nil
}

// requireBlobs returns an error wrapping ErrNotFound or ErrDigestMismatch unless every blob of
// descs is stored with its size.
func (s *Store) requireBlobs(descs []ocispec.Descriptor) error {
	for _, desc := range descs {
		n, err := s.blobSize(desc.Digest)
		if err != nil {
			return err
		}
		if n != desc.Size {
			return fmt.Errorf("blob %s: %d bytes, expected %d: %w", desc.Digest, n, desc.Size, ErrDigestMismatch)
		}
	}
	return nil
}
