package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/manifest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxMetaBlob bounds the manifests and configs the store reads whole.
const maxMetaBlob = 4 << 20

// minPrefix is the shortest digest prefix Resolve accepts.
const minPrefix = 4

// Image is an imgctl image in the store.
type Image struct {
	// Descriptor is the manifest's entry in index.json.
	Descriptor ocispec.Descriptor
	Manifest   ocispec.Manifest
	Config     manifest.Config
}

// Digest is the image's identity: its manifest digest.
func (i Image) Digest() digest.Digest { return i.Descriptor.Digest }

// PutImage writes cfg as the config blob and the manifest tying it to artifacts, and adds the
// manifest to index.json (ref.name = cfg.Version, so `skopeo inspect oci:DIR:VERSION` finds
// it). The artifacts' blobs must already be stored. Putting the same image again changes
// nothing; putting a different image under a version already in the store fails with
// ErrConflict, because a version names one immutable image.
func (s *Store) PutImage(ctx context.Context, cfg manifest.Config, artifacts []manifest.Artifact) (ocispec.Descriptor, error) {
	r, err := manifest.Render(cfg, artifacts)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting image: %w", err)
	}
	for _, a := range artifacts {
		n, err := s.blobSize(a.Digest)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("putting image %s: artifact %q: %w", cfg.Version, a.Name, err)
		}
		if n != a.Size {
			return ocispec.Descriptor{}, fmt.Errorf("putting image %s: artifact %q: size %d, but blob %s has %d bytes: %w",
				cfg.Version, a.Name, a.Size, a.Digest, n, ErrDigestMismatch)
		}
	}
	if _, _, err := s.WriteBlob(ctx, bytes.NewReader(r.ConfigJSON), r.ConfigDescriptor.Size, r.ConfigDescriptor.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting image %s: config: %w", cfg.Version, err)
	}
	if _, _, err := s.WriteBlob(ctx, bytes.NewReader(r.ManifestJSON), r.ManifestDescriptor.Size, r.ManifestDescriptor.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting image %s: manifest: %w", cfg.Version, err)
	}
	desc := r.ManifestDescriptor
	desc.Annotations = map[string]string{
		manifest.AnnotationRefName: cfg.Version,
		manifest.AnnotationName:    cfg.Name,
	}
	err = s.updateIndex(ctx, func(idx *ocispec.Index) (bool, error) {
		// Again under the lock, which GC holds while it removes blobs: once this passes, no
		// blob of the image can go before the index references it.
		if err := s.requireBlobs(append([]ocispec.Descriptor{r.ConfigDescriptor, desc}, r.Manifest.Layers...)); err != nil {
			return false, err
		}
		changed, found := false, false
		kept := make([]ocispec.Descriptor, 0, len(idx.Manifests)+1)
		for _, m := range idx.Manifests {
			if m.Digest == desc.Digest {
				if found { // a duplicate entry another writer left: drop it
					changed = true
					continue
				}
				found = true
				if !descEqual(m, desc) {
					m, changed = desc, true
				}
			} else if m.Annotations[manifest.AnnotationRefName] == cfg.Version {
				return false, fmt.Errorf("version %s already names image %s: %w", cfg.Version, m.Digest, ErrConflict)
			}
			kept = append(kept, m)
		}
		if !found {
			kept, changed = append(kept, desc), true
		}
		idx.Manifests = kept
		return changed, nil
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting image %s: %w", cfg.Version, err)
	}
	s.log.Info("stored image", "name", cfg.Name, "version", cfg.Version, "digest", desc.Digest)
	return desc, nil
}

func descEqual(a, b ocispec.Descriptor) bool {
	return a.MediaType == b.MediaType && a.ArtifactType == b.ArtifactType && a.Digest == b.Digest &&
		a.Size == b.Size && maps.Equal(a.Annotations, b.Annotations) && a.Platform == nil && b.Platform == nil &&
		len(a.URLs) == 0 && len(b.URLs) == 0 && len(a.Data) == 0 && len(b.Data) == 0
}

// UnreadableImage is an image manifest in index.json whose manifest or config blob is missing,
// corrupt or does not decode. Err wraps ErrNotFound or ErrDigestMismatch when that is why.
type UnreadableImage struct {
	Descriptor ocispec.Descriptor // its entry in index.json
	Err        error
}

// Version is the version index.json records for the image ("" if none).
func (u UnreadableImage) Version() string {
	return u.Descriptor.Annotations[manifest.AnnotationRefName]
}

func (u UnreadableImage) Error() string {
	v := ""
	if u.Version() != "" {
		v = " (" + u.Version() + ")"
	}
	return fmt.Sprintf("image %s%s cannot be read: %v (run `imgctl store verify`)", u.Descriptor.Digest, v, u.Err)
}

func (u UnreadableImage) Unwrap() error { return u.Err }

// List returns the imgctl images in index.json, newest first (by SourceDateEpoch), then by
// version and digest. Entries that are not imgctl images (another tool may share the layout)
// are skipped; an image whose manifest or config is missing or corrupt is an error naming it.
// ListAll lists the others despite it.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	imgs, bad, err := s.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		errs := make([]error, len(bad))
		for i, b := range bad {
			errs[i] = b
		}
		return nil, fmt.Errorf("listing images: %w", errors.Join(errs...))
	}
	return imgs, nil
}

// ListAll is List that does not stop at images it cannot read: it returns them apart, in
// index order, so that one corrupt blob hides no other image. The error is for index.json.
func (s *Store) ListAll(ctx context.Context) ([]Image, []UnreadableImage, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, nil, err
	}
	seen := make(map[digest.Digest]bool, len(idx.Manifests))
	var out []Image
	var bad []UnreadableImage
	for _, desc := range idx.Manifests {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if seen[desc.Digest] {
			continue
		}
		seen[desc.Digest] = true
		if desc.MediaType != ocispec.MediaTypeImageManifest {
			s.log.Debug("skipping index entry that is not an image manifest", "digest", desc.Digest, "mediaType", desc.MediaType)
			continue
		}
		img, ok, err := s.loadImage(ctx, desc)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			bad = append(bad, UnreadableImage{Descriptor: desc, Err: err})
			continue
		}
		if ok {
			out = append(out, img)
		}
	}
	slices.SortFunc(out, compareImages)
	return out, bad, nil
}

// loadImage reads and checks the manifest and config of an index entry; ok is false for a
// manifest that is not an imgctl image.
func (s *Store) loadImage(ctx context.Context, desc ocispec.Descriptor) (img Image, ok bool, err error) {
	data, err := s.readBlob(ctx, desc.Digest, desc.Size, maxMetaBlob)
	if err != nil {
		return Image{}, false, fmt.Errorf("manifest: %w", err)
	}
	var probe ocispec.Manifest
	if err := json.Unmarshal(data, &probe); err != nil {
		return Image{}, false, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	if probe.Config.MediaType != manifest.ConfigMediaType {
		s.log.Debug("skipping foreign image", "digest", desc.Digest, "configMediaType", probe.Config.MediaType)
		return Image{}, false, nil
	}
	m, err := manifest.DecodeManifest(data)
	if err != nil {
		return Image{}, false, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	cdata, err := s.readBlob(ctx, m.Config.Digest, m.Config.Size, maxMetaBlob)
	if err != nil {
		return Image{}, false, fmt.Errorf("config: %w", err)
	}
	cfg, err := manifest.DecodeConfig(cdata)
	if err != nil {
		return Image{}, false, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	return Image{Descriptor: desc, Manifest: m, Config: cfg}, true, nil
}

// Resolve finds one image by reference: a full digest ("sha256:<hex>"), a unique prefix of its
// hex digest of at least 4 digits (with or without "sha256:"), or a version. It returns an
// error wrapping ErrNotFound, or ErrAmbiguous naming the candidates. An image that cannot be
// read does not stop the others from resolving: by full digest, only that image is read; by
// prefix or version, an unreadable image is a candidate when its digest or the version
// index.json records for it matches, and resolving to it is an UnreadableImage error.
func (s *Store) Resolve(ctx context.Context, ref string) (Image, error) {
	if d, err := digest.Parse(ref); err == nil {
		return s.resolveDigest(ctx, d)
	}
	imgs, bad, err := s.ListAll(ctx)
	if err != nil {
		return Image{}, fmt.Errorf("resolving %q: %w", ref, err)
	}

	hexRef, hadAlg := strings.CutPrefix(ref, string(digest.SHA256)+":")
	isHex := hexRef != "" && strings.Trim(hexRef, "0123456789abcdef") == ""
	isPrefix := func(d digest.Digest) bool {
		return isHex && len(hexRef) >= minPrefix && strings.HasPrefix(d.Encoded(), hexRef)
	}
	var matches []Image
	for _, img := range imgs {
		if img.Config.Version == ref || img.Descriptor.Annotations[manifest.AnnotationRefName] == ref || isPrefix(img.Digest()) {
			matches = append(matches, img)
		}
	}
	var badMatches []UnreadableImage
	for _, b := range bad {
		if b.Version() == ref || isPrefix(b.Descriptor.Digest) {
			badMatches = append(badMatches, b)
		} else {
			s.log.Warn("skipping an image that cannot be read", "digest", b.Descriptor.Digest, "version", b.Version(), "err", b.Err)
		}
	}
	switch {
	case len(matches) == 1 && len(badMatches) == 0:
		return matches[0], nil
	case len(matches) == 0 && len(badMatches) == 1:
		return Image{}, badMatches[0]
	case len(matches) == 0 && len(badMatches) == 0:
		var unread string
		if n := len(bad); n == 1 {
			unread = "; 1 image in the store cannot be read (run `imgctl store verify`)"
		} else if n > 1 {
			unread = fmt.Sprintf("; %d images in the store cannot be read (run `imgctl store verify`)", n)
		}
		if isHex && len(hexRef) < minPrefix {
			return Image{}, fmt.Errorf("image %q: %w (a digest prefix needs at least %d hex digits)%s", ref, ErrNotFound, minPrefix, unread)
		}
		if hadAlg && !isHex {
			return Image{}, fmt.Errorf("image %q: %w (not a sha256 digest or prefix)%s", ref, ErrNotFound, unread)
		}
		return Image{}, fmt.Errorf("image %q: %w%s", ref, ErrNotFound, unread)
	}
	names := make([]string, 0, len(matches)+len(badMatches))
	for _, m := range matches {
		names = append(names, fmt.Sprintf("%s (%s %s)", m.Descriptor.Digest, m.Config.Name, m.Config.Version))
	}
	for _, b := range badMatches {
		names = append(names, fmt.Sprintf("%s (unreadable: run `imgctl store verify`)", b.Descriptor.Digest))
	}
	return Image{}, fmt.Errorf("image %q: %w: matches %s", ref, ErrAmbiguous, strings.Join(names, ", "))
}

// resolveDigest finds the image whose manifest is d, reading no other.
func (s *Store) resolveDigest(ctx context.Context, d digest.Digest) (Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return Image{}, fmt.Errorf("resolving %s: %w", d, err)
	}
	for _, desc := range idx.Manifests {
		if desc.Digest != d || desc.MediaType != ocispec.MediaTypeImageManifest {
			continue
		}
		img, ok, err := s.loadImage(ctx, desc)
		if err != nil {
			if ctx.Err() != nil {
				return Image{}, ctx.Err()
			}
			return Image{}, UnreadableImage{Descriptor: desc, Err: err}
		}
		if ok {
			return img, nil
		}
		break // another tool's image
	}
	return Image{}, fmt.Errorf("image %s: %w", d, ErrNotFound)
}
