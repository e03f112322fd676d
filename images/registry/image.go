package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/progress"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxManifest bounds the manifests and configs read whole (see MaxManifest).
const maxManifest = MaxManifest

// Push uploads img from st to repo (REGISTRY/REPOSITORY) and tags it Tag(version). Every blob
// the manifest references (config and artifacts) is streamed from the store, verified as it is
// read, and skipped when the registry already has it; then the manifest bytes go up unchanged,
// so the returned digest is img.Digest(). Pushing an image whose tag already names it uploads
// none of its blobs. The image's signatures go along (see pushSignatures): as OCI 1.1
// referrers and in the tag cosign reads, CosignTag. A tag that names a different image is an
// error wrapping store.ErrConflict: a version names one immutable image. (Registries cannot check-and-set a tag, so two concurrent
// pushes of different images with the same version can still race; the last one wins.)
func Push(ctx context.Context, st *store.Store, img store.Image, repo string, o Options) (_ name.Digest, err error) {
	defer func() { err = o.explainAuth(err, repo) }()
	r, err := parseRepo(repo, o)
	if err != nil {
		return name.Digest{}, fmt.Errorf("pushing: %w", err)
	}
	version := img.Config.Version
	tag := r.Tag(Tag(version))
	ref := r.Digest(img.Digest().String())
	fail := func(format string, args ...any) (name.Digest, error) {
		return name.Digest{}, fmt.Errorf("pushing %s to %s: %w", version, tag, fmt.Errorf(format, args...))
	}

	raw, err := readStoreBlob(ctx, st, img.Descriptor)
	if err != nil {
		return fail("manifest: %w", err)
	}
	m, err := manifest.DecodeManifest(raw)
	if err != nil {
		return fail("manifest %s: %w", img.Digest(), err)
	}
	blobs := make([]*storeBlob, 0, len(m.Layers)+1)
	blobs = append(blobs, &storeBlob{ctx: ctx, st: st, desc: m.Config, name: "config"})
	for _, l := range m.Layers {
		blobs = append(blobs, &storeBlob{ctx: ctx, st: st, desc: l, name: l.Annotations[ocispec.AnnotationTitle]})
	}
	for _, b := range blobs { // fail before any network traffic if the store lacks a blob
		if err := b.check(); err != nil {
			return fail("%w", err)
		}
	}

	c, err := newClient(ctx, r.Registry, o)
	if err != nil {
		return fail("%w", err)
	}
	log := c.log.With("ref", tag.String(), "digest", img.Digest())
	if tag.TagStr() != version {
		log.Info("version is not a valid tag; tagging with a sanitized form", "version", version, "tag", tag.TagStr())
	}
	switch cur, err := c.puller.Head(ctx, tag); {
	case err == nil && cur.Digest.String() == img.Digest().String():
		log.Info("image already in registry")
		if err := c.pushSignatures(ctx, st, img, r, log); err != nil {
			return fail("signatures: %w", err)
		}
		return ref, nil
	case err == nil:
		return fail("tag already names image %s: %w", cur.Digest, store.ErrConflict)
	case !isNotFound(err):
		return fail("checking tag: %w", err)
	}

	log.Info("pushing image", "blobs", len(blobs))
	// Bytes: uploaded as read from the store, plus the size of blobs the registry has.
	step := progress.Start(ctx, "push "+version+" to "+r.String())
	var total int64
	for _, b := range blobs {
		total += b.desc.Size
		b.step = step
	}
	step.SetTotal(total)
	var uploaded, bytesUp atomic.Int64
	err = forEach(ctx, c.jobs, len(blobs), func(ctx context.Context, i int) error {
		b := blobs[i]
		if err := c.pusher.Upload(ctx, r, b); err != nil {
			return fmt.Errorf("blob %s (%s): %w", b.desc.Digest, b.name, err)
		}
		if b.opened.Load() {
			uploaded.Add(1)
			bytesUp.Add(b.desc.Size)
			step.Add(0, 1)
			log.Debug("uploaded blob", "blob", b.desc.Digest, "name", b.name, "size", b.desc.Size)
		} else {
			step.Add(b.desc.Size, 1)
			log.Debug("blob already in registry", "blob", b.desc.Digest, "name", b.name)
		}
		return nil
	})
	if err == nil {
		if err = c.pusher.Put(ctx, tag, rawManifest{raw: raw, mediaType: types.MediaType(m.MediaType)}); err != nil {
			err = fmt.Errorf("manifest %s: %w", img.Digest(), err)
		}
	}
	step.Done(err)
	if err != nil {
		return fail("%w", err)
	}
	log.Info("pushed image", "uploadedBlobs", uploaded.Load(), "uploadedBytes", bytesUp.Load())
	if err := c.pushSignatures(ctx, st, img, r, log); err != nil {
		return fail("signatures: %w", err)
	}
	return ref, nil
}

// readStoreBlob reads a small blob (a manifest) from the store and checks its size.
func readStoreBlob(ctx context.Context, st *store.Store, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxManifest {
		return nil, fmt.Errorf("blob %s: %d bytes, more than %d", desc.Digest, desc.Size, maxManifest)
	}
	rc, err := st.OpenBlob(ctx, desc.Digest)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != desc.Size {
		return nil, fmt.Errorf("blob %s: %d bytes, descriptor says %d: %w", desc.Digest, len(data), desc.Size, store.ErrDigestMismatch)
	}
	return data, nil
}

// storeBlob is a store blob as a go-containerregistry layer. Its content is streamed from the
// store (and verified against its digest as it is read) only if the registry lacks it.
type storeBlob struct {
	ctx    context.Context // for OpenBlob: the layer interface passes none
	st     *store.Store
	desc   ocispec.Descriptor
	name   string         // for messages: the artifact's title, or "config"
	opened atomic.Bool    // Compressed was called: the registry lacked the blob
	step   *progress.Step // counts the bytes read for the upload
}

// check makes sure the store has the blob with the manifest's size.
func (b *storeBlob) check() error {
	p, err := b.st.BlobPath(b.desc.Digest)
	if err != nil {
		return fmt.Errorf("blob %s (%s): %w", b.desc.Digest, b.name, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("blob %s (%s): %w", b.desc.Digest, b.name, err)
	}
	if fi.Size() != b.desc.Size {
		return fmt.Errorf("blob %s (%s): %d bytes in the store, manifest says %d: %w",
			b.desc.Digest, b.name, fi.Size(), b.desc.Size, store.ErrDigestMismatch)
	}
	return nil
}

func (b *storeBlob) Digest() (v1.Hash, error) { return v1.NewHash(b.desc.Digest.String()) }
func (b *storeBlob) DiffID() (v1.Hash, error) { return b.Digest() }
func (b *storeBlob) Size() (int64, error)     { return b.desc.Size, nil }
func (b *storeBlob) MediaType() (types.MediaType, error) {
	return types.MediaType(b.desc.MediaType), nil
}
func (b *storeBlob) Compressed() (io.ReadCloser, error) {
	b.opened.Store(true)
	rc, err := b.st.OpenBlob(b.ctx, b.desc.Digest)
	if err != nil || b.step == nil {
		return rc, err
	}
	return countingReadCloser{rc, b.step}, nil
}

// countingReadCloser adds what is read through it to a progress step.
type countingReadCloser struct {
	io.ReadCloser
	step *progress.Step
}

func (c countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.step.Add(int64(n), 0)
	return n, err
}
func (b *storeBlob) Uncompressed() (io.ReadCloser, error) { return b.Compressed() }

// rawManifest is manifest bytes to PUT as they are.
type rawManifest struct {
	raw       []byte
	mediaType types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mediaType, nil }

// Pull copies the imgctl image ref (REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:…)
// into st and returns it. It fetches the manifest and refuses anything that is not an imgctl
// image (an error wrapping ErrNotImgctl says what it is), then streams every blob into the
// store, each verified against its digest and size, skipping blobs the store already has. The
// image is added to index.json, as store.PutImage adds it, only when all its blobs are in: a
// failed pull leaves no index entry (blobs already stored stay, for the next attempt and for
// garbage collection).
//
// A tag must name what it serves: Tag(version) of the image (as Push tags it), or a channel of
// the repository (PushChannel) whose history's head is the image. Any other tag (one moved to
// another image, or made by another tool) fails with an error wrapping ErrTagMismatch that
// names the tag and the version it serves, before any blob is downloaded, unless
// o.AllowTagMismatch. Pulls by digest are not checked: the digest is the image.
//
// The manifest must be the one store.PutImage writes for its config and artifacts, byte for
// byte: the index entry is added through PutImage, which re-renders the manifest, and the
// digest must not change. Manifests imgctl pushed always are; one rewritten by another tool is
// refused with an error naming both digests.
func Pull(ctx context.Context, st *store.Store, ref string, o Options) (_ store.Image, err error) {
	defer func() { err = o.explainAuth(err, ref) }()
	r, err := parseRef(ref, o)
	if err != nil {
		return store.Image{}, fmt.Errorf("pulling: %w", err)
	}
	fail := func(format string, args ...any) (store.Image, error) {
		return store.Image{}, fmt.Errorf("pulling %s: %w", r, fmt.Errorf(format, args...))
	}
	c, err := newClient(ctx, r.Context().Registry, o)
	if err != nil {
		return fail("%w", err)
	}
	desc, err := c.puller.Get(ctx, r)
	if err != nil {
		return fail("manifest: %w", err)
	}
	raw := desc.Manifest
	mdigest, err := digest.Parse(desc.Digest.String())
	if err != nil {
		return fail("manifest digest: %w", err)
	}
	log := c.log.With("ref", r.String(), "digest", mdigest)
	if len(raw) > maxManifest {
		return fail("manifest %s: %d bytes, more than %d", mdigest, len(raw), maxManifest)
	}
	m, err := checkImgctl(raw)
	if err != nil {
		return fail("manifest %s: %w", mdigest, err)
	}
	repo := r.Context()

	cdata, err := c.fetchSmall(ctx, repo, m.Config, maxManifest)
	if err != nil {
		return fail("config blob %s: %w", m.Config.Digest, err)
	}
	cfg, err := manifest.DecodeConfig(cdata)
	if err != nil {
		return fail("config blob %s: %w", m.Config.Digest, err)
	}
	arts := manifest.Artifacts(m)
	rendered, err := manifest.Render(cfg, arts)
	if err != nil {
		return fail("manifest %s: %w", mdigest, err)
	}
	if rendered.ManifestDescriptor.Digest != mdigest {
		return fail("manifest %s is not in the form imgctl writes for its config and artifacts (that would be %s); it cannot be stored without changing its digest",
			mdigest, rendered.ManifestDescriptor.Digest)
	}

	if tag, ok := r.(name.Tag); ok {
		if err := c.checkTag(ctx, tag, mdigest, cfg.Version, o.AllowTagMismatch); err != nil {
			return fail("%w", err)
		}
	}

	log.Info("pulling image", "version", cfg.Version, "artifacts", len(arts))
	// Bytes: downloaded, plus the size of blobs the store has.
	step := progress.Start(ctx, "pull "+cfg.Version+" from "+repo.String())
	var total int64
	for _, a := range arts {
		total += a.Size
	}
	step.SetTotal(total)
	var fetched, bytesDown atomic.Int64
	err = forEach(ctx, c.jobs, len(arts), func(ctx context.Context, i int) error {
		a := arts[i]
		rb := &remoteBlob{want: a.Digest, size: a.Size, step: step, open: func() (io.ReadCloser, error) {
			return c.openBlob(ctx, repo, a.Digest)
		}}
		defer rb.Close()
		if _, _, err := st.WriteBlob(ctx, rb, a.Size, a.Digest); err != nil {
			return fmt.Errorf("blob %s (%s): %w", a.Digest, a.Name, err)
		}
		if rb.rc != nil {
			fetched.Add(1)
			bytesDown.Add(a.Size)
			step.Add(0, 1)
			log.Debug("downloaded blob", "blob", a.Digest, "name", a.Name, "size", a.Size)
		} else {
			step.Add(a.Size, 1)
			log.Debug("blob already in store", "blob", a.Digest, "name", a.Name)
		}
		return nil
	})
	step.Done(err)
	if err != nil {
		return fail("%w", err)
	}
	// The config and manifest blobs are written by PutImage (from rendered, which is
	// byte-identical), which then adds the index entry.
	if _, err := st.PutImage(ctx, cfg, arts); err != nil {
		return fail("%w", err)
	}
	img, err := st.Resolve(ctx, mdigest.String())
	if err != nil {
		return fail("%w", err)
	}
	log.Info("pulled image", "version", cfg.Version, "downloadedBlobs", fetched.Load(), "downloadedBytes", bytesDown.Load())
	return img, nil
}

// checkTag checks that tag, which serves image d of version v, names it: it is Tag(v), or a
// channel whose history's head is d. Otherwise it returns an error wrapping ErrTagMismatch, or
// with allow only logs a warning.
func (c *client) checkTag(ctx context.Context, tag name.Tag, d digest.Digest, v string, allow bool) error {
	t := tag.TagStr()
	if t == Tag(v) {
		return nil
	}
	why := "no channel history " + t + historySuffix
	if _, histTag, err := channelTags(tag.Context(), t); err == nil {
		switch h, hd, err := c.readHistory(ctx, histTag, t); {
		case err != nil:
			why = err.Error()
		case hd != "" && h.Head() == d:
			c.log.Info("pulling a channel's image", "channel", t, "version", v, "digest", d)
			return nil
		case hd != "":
			why = fmt.Sprintf("channel %s's history says its head is %s (an interrupted or racing push)", t, h.Head())
		}
	}
	if allow {
		c.log.Warn("tag does not name the image's version; storing it anyway", "tag", tag.String(), "version", v, "digest", d, "reason", why)
		return nil
	}
	return fmt.Errorf("tag %s serves version %s (tagged %s), and is not a channel pointing to it (%s): %w; pull by digest (%s@%s) or allow the mismatch (--allow-tag-mismatch) to store it anyway",
		t, v, Tag(v), why, ErrTagMismatch, tag.Context(), d)
}

// checkImgctl decodes raw and checks that it is an imgctl image manifest; otherwise the error
// wraps ErrNotImgctl and says what raw is.
func checkImgctl(raw []byte) (ocispec.Manifest, error) {
	var probe struct {
		MediaType    string             `json:"mediaType"`
		ArtifactType string             `json:"artifactType"`
		Config       ocispec.Descriptor `json:"config"`
		Manifests    []json.RawMessage  `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("%w: not JSON: %w", ErrNotImgctl, err)
	}
	if probe.ArtifactType == manifest.ArtifactType && probe.Config.MediaType == manifest.ConfigMediaType {
		m, err := manifest.DecodeManifest(raw)
		if err != nil {
			return ocispec.Manifest{}, err
		}
		return m, nil
	}
	return ocispec.Manifest{}, fmt.Errorf("%w: it is %s", ErrNotImgctl, describe(probe.MediaType, probe.ArtifactType, probe.Config.MediaType, probe.Manifests != nil))
}

// describe says in words what kind of manifest a foreign one is.
func describe(mediaType, artifactType, configType string, isIndex bool) string {
	switch {
	case mediaType == ocispec.MediaTypeImageIndex || mediaType == string(types.DockerManifestList) || mediaType == "" && isIndex:
		return fmt.Sprintf("an image index (%s), e.g. a multi-platform container image", mediaType)
	case artifactType == manifest.ArtifactType && configType == manifest.ConfigMediaType:
		return fmt.Sprintf("an imgctl image (artifactType %s)", artifactType)
	case artifactType == manifest.ArtifactType:
		return fmt.Sprintf("a manifest with the imgctl artifactType but config media type %q, not %q", configType, manifest.ConfigMediaType)
	case artifactType == channel.HistoryArtifactType:
		return "a channel history artifact (artifactType " + artifactType + ")"
	case artifactType != "":
		return fmt.Sprintf("an OCI artifact of type %q (config media type %q)", artifactType, configType)
	case configType == ocispec.MediaTypeImageConfig || configType == string(types.DockerConfigJSON):
		return fmt.Sprintf("a container image (manifest %s, config %s)", mediaType, configType)
	case configType == manifest.ConfigMediaType:
		return fmt.Sprintf("a manifest with the imgctl config media type but artifactType %q, not %q", artifactType, manifest.ArtifactType)
	}
	return fmt.Sprintf("a manifest of media type %q with config media type %q", mediaType, configType)
}

// openBlob streams blob d of repo; go-containerregistry checks the digest at EOF.
func (c *client) openBlob(ctx context.Context, repo name.Repository, d digest.Digest) (io.ReadCloser, error) {
	l, err := c.puller.Layer(ctx, repo.Digest(d.String()))
	if err != nil {
		return nil, err
	}
	return l.Compressed()
}

// fetchSmall reads a small blob whole and checks its size and digest.
func (c *client) fetchSmall(ctx context.Context, repo name.Repository, desc ocispec.Descriptor, max int64) ([]byte, error) {
	if desc.Size > max || desc.Size < 0 {
		return nil, fmt.Errorf("%d bytes, limit %d", desc.Size, max)
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, err
	}
	rc, err := c.openBlob(ctx, repo, desc.Digest)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("content is %s (%d bytes), expected %d bytes: %w", digest.FromBytes(data), len(data), desc.Size, store.ErrDigestMismatch)
	}
	return data, nil
}

// remoteBlob reads a blob from the registry for the store: it opens the request on the first
// Read, so that a blob the store already has (and does not read) is never requested; it stops
// at the first byte past the expected size, and reports content that does not hash to the
// expected digest as store.ErrDigestMismatch (go-containerregistry also checks, with an error
// of its own).
type remoteBlob struct {
	open func() (io.ReadCloser, error)
	want digest.Digest
	size int64

	rc   io.ReadCloser
	err  error
	h    digest.Digester
	n    int64
	step *progress.Step // counts the bytes read
}

func (b *remoteBlob) Read(p []byte) (int, error) {
	if b.rc == nil && b.err == nil {
		b.rc, b.err = b.open()
		b.h = b.want.Algorithm().Digester()
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.rc.Read(p)
	b.h.Hash().Write(p[:n])
	b.n += int64(n)
	b.step.Add(int64(n), 0)
	switch {
	case b.n > b.size:
		b.err = fmt.Errorf("registry sent more than the %d bytes the manifest says: %w", b.size, store.ErrDigestMismatch)
	case err != nil && b.n == b.size && b.h.Digest() != b.want:
		b.err = fmt.Errorf("content is %s, expected %s: %w", b.h.Digest(), b.want, store.ErrDigestMismatch)
	case err != nil:
		b.err = err
	default:
		return n, nil
	}
	return n, b.err
}

func (b *remoteBlob) Close() {
	if b.rc != nil {
		_ = b.rc.Close()
	}
}
