package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/imgctl/imgctl/images/manifest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrer is a manifest listed in index.json that points at another manifest through its
// subject field (OCI image spec 1.1): a signature, an SBOM, an attestation.
type Referrer struct {
	// Descriptor is the manifest's entry in index.json; its ArtifactType is the manifest's
	// artifactType, or its config media type when it has none.
	Descriptor ocispec.Descriptor
	Manifest   ocispec.Manifest
}

// PutReferrer stores data, the JSON of an OCI image manifest with a subject, and lists it in
// index.json so that it is reachable (what index.json reaches is kept by garbage collection)
// and found by Referrers. The subject must be a manifest listed in index.json, and the
// manifest's config and layers must already be stored with the sizes it gives. The index
// entry carries the manifest's artifact type and annotations, as the OCI referrers API
// reports them, but never a ref.name: a referrer is not a version. Putting the same manifest
// again changes nothing.
func (s *Store) PutReferrer(ctx context.Context, data []byte) (ocispec.Descriptor, error) {
	if int64(len(data)) > maxMetaBlob {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer: manifest of %d bytes exceeds %d", len(data), maxMetaBlob)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer: decoding manifest: %w", err)
	}
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer: not an OCI image manifest (schemaVersion %d, mediaType %q)",
			m.SchemaVersion, m.MediaType)
	}
	if m.Subject == nil {
		return ocispec.Descriptor{}, errors.New("putting referrer: manifest has no subject")
	}
	if _, err := s.blobPath(m.Subject.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer: subject: %w", err)
	}
	desc := ocispec.Descriptor{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: referrerType(m),
		Digest:       digest.FromBytes(data),
		Size:         int64(len(data)),
	}
	if len(m.Annotations) > 0 {
		desc.Annotations = maps.Clone(m.Annotations)
		delete(desc.Annotations, manifest.AnnotationRefName)
		if len(desc.Annotations) == 0 {
			desc.Annotations = nil
		}
	}
	if _, _, err := s.WriteBlob(ctx, bytes.NewReader(data), desc.Size, desc.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer %s: %w", desc.Digest, err)
	}
	err := s.updateIndex(ctx, func(idx *ocispec.Index) (bool, error) {
		// Checked under the lock, so that a concurrent garbage collection cannot remove the
		// subject or a blob between the check and the index update.
		subjectListed := false
		for _, e := range idx.Manifests {
			if e.Digest == m.Subject.Digest {
				subjectListed = true
				break
			}
		}
		if !subjectListed {
			return false, fmt.Errorf("subject %s is not in the store: %w", m.Subject.Digest, ErrNotFound)
		}
		refs := append([]ocispec.Descriptor{*m.Subject, m.Config}, m.Layers...)
		for i, r := range refs {
			n, err := s.blobSize(r.Digest)
			if err != nil {
				return false, err
			}
			if n != r.Size {
				what := "subject"
				switch {
				case i == 1:
					what = "config"
				case i > 1:
					what = fmt.Sprintf("layers[%d]", i-2)
				}
				return false, fmt.Errorf("%s %s: size %d, but the blob has %d bytes: %w", what, r.Digest, r.Size, n, ErrDigestMismatch)
			}
		}
		changed, found := false, false
		kept := make([]ocispec.Descriptor, 0, len(idx.Manifests)+1)
		for _, e := range idx.Manifests {
			if e.Digest == desc.Digest {
				if found { // a duplicate another writer left
					changed = true
					continue
				}
				found = true
				if !descEqual(e, desc) {
					e, changed = desc, true
				}
			}
			kept = append(kept, e)
		}
		if !found {
			kept, changed = append(kept, desc), true
		}
		idx.Manifests = kept
		return changed, nil
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting referrer %s: %w", desc.Digest, err)
	}
	s.log.Info("stored referrer", "digest", desc.Digest, "subject", m.Subject.Digest, "artifactType", desc.ArtifactType)
	return desc, nil
}

// referrerType is a manifest's artifact type as the OCI referrers API defines it.
func referrerType(m ocispec.Manifest) string {
	if m.ArtifactType != "" {
		return m.ArtifactType
	}
	return m.Config.MediaType
}

// Referrers returns the manifests listed in index.json whose subject is subject, in index
// order. With artifactType set, only those of that artifact type are returned (and only
// their manifests are read). A listed manifest that is missing or corrupt is an error.
func (s *Store) Referrers(ctx context.Context, subject digest.Digest, artifactType string) ([]Referrer, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, fmt.Errorf("listing referrers of %s: %w", subject, err)
	}
	seen := make(map[digest.Digest]bool, len(idx.Manifests))
	var out []Referrer
	for _, desc := range idx.Manifests {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if seen[desc.Digest] || desc.MediaType != ocispec.MediaTypeImageManifest || desc.Digest == subject {
			continue
		}
		seen[desc.Digest] = true
		if artifactType != "" && desc.ArtifactType != "" && desc.ArtifactType != artifactType {
			continue
		}
		data, err := s.readBlob(ctx, desc.Digest, desc.Size, maxMetaBlob)
		if err != nil {
			return nil, fmt.Errorf("listing referrers of %s: manifest: %w", subject, err)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("listing referrers of %s: manifest %s: %w", subject, desc.Digest, err)
		}
		if m.Subject == nil || m.Subject.Digest != subject {
			continue
		}
		if artifactType != "" && referrerType(m) != artifactType {
			continue
		}
		if desc.ArtifactType == "" {
			desc.ArtifactType = referrerType(m)
		}
		out = append(out, Referrer{Descriptor: desc, Manifest: m})
	}
	return out, nil
}
