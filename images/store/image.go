package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
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

// List returns the imgctl images in index.json, newest first (by SourceDateEpoch), then by
// version and digest. Entries that are not imgctl images (another tool may share the layout)
// are skipped; an imgctl entry whose manifest or config is missing or corrupt is an error.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	seen := make(map[digest.Digest]bool, len(idx.Manifests))
	var out []Image
	for _, desc := range idx.Manifests {
		if err := ctx.Err(); err != nil {
			return nil, err
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
			return nil, fmt.Errorf("listing images: %w", err)
		}
		if ok {
			out = append(out, img)
		}
	}
	slices.SortFunc(out, func(a, b Image) int {
		return cmp.Or(
			cmp.Compare(b.Config.SourceDateEpoch, a.Config.SourceDateEpoch),
			cmp.Compare(a.Config.Version, b.Config.Version),
			cmp.Compare(a.Descriptor.Digest, b.Descriptor.Digest),
		)
	})
	return out, nil
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
		return Image{}, false, fmt.Errorf("image %s: config: %w", desc.Digest, err)
	}
	cfg, err := manifest.DecodeConfig(cdata)
	if err != nil {
		return Image{}, false, fmt.Errorf("image %s: config %s: %w", desc.Digest, m.Config.Digest, err)
	}
	return Image{Descriptor: desc, Manifest: m, Config: cfg}, true, nil
}

// Resolve finds one image by reference: a full digest ("sha256:<hex>"), a unique prefix of its
// hex digest of at least 4 digits (with or without "sha256:"), or a version. It returns an
// error wrapping ErrNotFound, or ErrAmbiguous naming the candidates.
func (s *Store) Resolve(ctx context.Context, ref string) (Image, error) {
	imgs, err := s.List(ctx)
	if err != nil {
		return Image{}, fmt.Errorf("resolving %q: %w", ref, err)
	}
	if d, err := digest.Parse(ref); err == nil {
		for _, img := range imgs {
			if img.Descriptor.Digest == d {
				return img, nil
			}
		}
		return Image{}, fmt.Errorf("image %s: %w", d, ErrNotFound)
	}

	var matches []Image
	for _, img := range imgs {
		if img.Config.Version == ref || img.Descriptor.Annotations[manifest.AnnotationRefName] == ref {
			matches = append(matches, img)
		}
	}
	hexRef, hadAlg := strings.CutPrefix(ref, string(digest.SHA256)+":")
	isHex := hexRef != "" && strings.Trim(hexRef, "0123456789abcdef") == ""
	if isHex && len(hexRef) >= minPrefix {
		for _, img := range imgs {
			if strings.HasPrefix(img.Descriptor.Digest.Encoded(), hexRef) && !slices.ContainsFunc(matches, func(m Image) bool {
				return m.Descriptor.Digest == img.Descriptor.Digest
			}) {
				matches = append(matches, img)
			}
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		if isHex && len(hexRef) < minPrefix {
			return Image{}, fmt.Errorf("image %q: %w (a digest prefix needs at least %d hex digits)", ref, ErrNotFound, minPrefix)
		}
		if hadAlg && !isHex {
			return Image{}, fmt.Errorf("image %q: %w (not a sha256 digest or prefix)", ref, ErrNotFound)
		}
		return Image{}, fmt.Errorf("image %q: %w", ref, ErrNotFound)
	}
	names := make([]string, len(matches))
	for i, m := range matches {
		names[i] = fmt.Sprintf("%s (%s %s)", m.Descriptor.Digest, m.Config.Name, m.Config.Version)
	}
	return Image{}, fmt.Errorf("image %q: %w: matches %s", ref, ErrAmbiguous, strings.Join(names, ", "))
}
