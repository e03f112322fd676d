package registry

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxSignatures bounds the signature manifests read for one image, maxPayload a payload blob.
const (
	maxSignatures = 64
	maxPayload    = 64 << 10
)

// Signatures returns the signatures the repository holds for img: the OCI 1.1 referrers of
// img of artifactType sign.ArtifactType (the Referrers API, or its fallback tag sha256-<hex>),
// one per payload layer, as sign.Signatures returns them from a store. Nothing is verified:
// pass them to sign.Policy.VerifySignatures. A signature manifest that cannot be read, or whose
// subject is not img, is an error; a payload that cannot be read is returned with Err set.
func (i *Images) Signatures(ctx context.Context, img store.Image) ([]sign.Signature, error) {
	r, err := parseRepo(i.Repo, i.Options)
	if err != nil {
		return nil, fmt.Errorf("signatures of %s: %w", img.Digest(), err)
	}
	fail := func(format string, args ...any) ([]sign.Signature, error) {
		return nil, fmt.Errorf("signatures of %s in %s: %w", img.Digest(), r, fmt.Errorf(format, args...))
	}
	if err := img.Digest().Validate(); err != nil {
		return fail("%w", err)
	}
	c, err := newClient(ctx, r.Registry, i.Options)
	if err != nil {
		return fail("%w", err)
	}
	idx, err := remote.Referrers(r.Digest(img.Digest().String()), remote.Reuse(c.puller), remote.WithContext(ctx),
		remote.WithFilter("artifactType", sign.ArtifactType))
	if err != nil {
		return fail("listing referrers: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fail("listing referrers: %w", err)
	}
	var out []sign.Signature
	n := 0
	for _, d := range im.Manifests {
		if d.ArtifactType != sign.ArtifactType {
			continue // a registry that ignores the filter
		}
		if n++; n > maxSignatures {
			return fail("more than %d signature manifests", maxSignatures)
		}
		md, err := digest.Parse(d.Digest.String())
		if err != nil {
			return fail("signature manifest %q: %w", d.Digest, err)
		}
		desc, err := c.puller.Get(ctx, r.Digest(md.String())) // checks the digest
		if err != nil {
			return fail("signature manifest %s: %w", md, err)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(desc.Manifest, &m); err != nil {
			return fail("signature manifest %s: %w", md, err)
		}
		if m.Subject == nil || m.Subject.Digest != img.Digest() || m.ArtifactType != sign.ArtifactType {
			return fail("signature manifest %s: not a signature of this image (subject %v, artifactType %q)", md, m.Subject, m.ArtifactType)
		}
		mdesc := ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: md, Size: desc.Size, ArtifactType: m.ArtifactType}
		for _, l := range m.Layers {
			if l.MediaType != sign.PayloadMediaType {
				continue
			}
			payload, err := c.fetchSmall(ctx, r, l, maxPayload)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				err = fmt.Errorf("payload blob %s: %w", l.Digest, err)
			}
			out = append(out, sign.NewSignature(mdesc, l, payload, err))
		}
	}
	c.log.Debug("read signatures", "repo", r.String(), "image", img.Digest(), "manifests", n, "signatures", len(out))
	return out, nil
}
