package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CosignTag is the tag under which cosign looks up the signatures of the image with manifest
// digest d by default: sha256-<hex>.sig in the image's repository.
func CosignTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded() + ".sig"
}

// pushSignatures sends the signatures st holds for img (see package sign) to repository r, in
// the two places readers look for them:
//
//   - each signature manifest, unchanged, by digest: an OCI 1.1 referrer of the image (on a
//     registry without the Referrers API, go-containerregistry adds it to the fallback index
//     tagged sha256-<hex>);
//   - tag CosignTag(img): an image whose layers are the signed payloads, each with its
//     signature annotation, as `cosign sign` writes it and `cosign verify` reads it by default.
//     Layers the tag already has (other signers', earlier pushes') are kept; ours are appended.
//
// Signatures the store cannot read are skipped with a warning. Nothing is written when the
// registry already has everything.
func (c *client) pushSignatures(ctx context.Context, st *store.Store, img store.Image, r name.Repository, log *slog.Logger) error {
	sigs, err := sign.Signatures(ctx, st, img)
	if err != nil {
		return err
	}
	var ok []sign.Signature
	for _, s := range sigs {
		if s.Err != nil {
			log.Warn("not pushing a signature the store cannot read", "signature", s.Manifest.Digest, "error", s.Err)
			continue
		}
		ok = append(ok, s)
	}
	if len(ok) == 0 {
		return nil
	}
	done := map[digest.Digest]bool{}
	for _, s := range ok {
		if done[s.Manifest.Digest] {
			continue
		}
		done[s.Manifest.Digest] = true
		if err := c.pushReferrer(ctx, st, s.Manifest, r); err != nil {
			return fmt.Errorf("signature manifest %s: %w", s.Manifest.Digest, err)
		}
	}

	tag := r.Tag(CosignTag(img.Digest()))
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	have := map[string]bool{} // payload digest + signature
	switch desc, err := c.puller.Get(ctx, tag); {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("reading %s: %w", tag, err)
	default:
		if base, err = desc.Image(); err != nil {
			return fmt.Errorf("reading %s: %w", tag, err)
		}
		m, err := base.Manifest()
		if err != nil {
			return fmt.Errorf("reading %s: %w", tag, err)
		}
		for _, l := range m.Layers {
			have[l.Digest.String()+" "+l.Annotations[sign.SignatureAnnotation]] = true
		}
	}
	var adds []mutate.Addendum
	for _, s := range ok {
		key := s.Layer.Digest.String() + " " + s.Layer.Annotations[sign.SignatureAnnotation]
		if have[key] {
			continue
		}
		have[key] = true
		adds = append(adds, mutate.Addendum{
			Layer:       static.NewLayer(s.Payload, types.MediaType(sign.PayloadMediaType)),
			Annotations: s.Layer.Annotations,
		})
	}
	if len(adds) == 0 {
		log.Debug("registry has every signature", "tag", tag.String(), "signatures", len(ok))
		return nil
	}
	var sigImg v1.Image
	if sigImg, err = mutate.Append(base, adds...); err != nil {
		return fmt.Errorf("%s: %w", tag, err)
	}
	if err := c.pusher.Push(ctx, tag, sigImg); err != nil {
		return fmt.Errorf("%s: %w", tag, err)
	}
	log.Info("pushed signatures", "tag", tag.String(), "added", len(adds), "total", len(have))
	return nil
}

// pushReferrer uploads the referrer manifest desc of st, with its blobs, to r by digest, unless
// the registry has it.
func (c *client) pushReferrer(ctx context.Context, st *store.Store, desc ocispec.Descriptor, r name.Repository) error {
	ref := r.Digest(desc.Digest.String())
	switch _, err := c.puller.Head(ctx, ref); {
	case err == nil:
		return nil
	case !isNotFound(err):
		return err
	}
	raw, err := readStoreBlob(ctx, st, desc)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("decoding: %w", err)
	}
	blobs := []*storeBlob{{ctx: ctx, st: st, desc: m.Config, name: "config"}}
	for _, l := range m.Layers {
		blobs = append(blobs, &storeBlob{ctx: ctx, st: st, desc: l, name: "payload"})
	}
	for _, b := range blobs {
		if err := b.check(); err != nil {
			return err
		}
		if err := c.pusher.Upload(ctx, r, b); err != nil {
			return fmt.Errorf("blob %s (%s): %w", b.desc.Digest, b.name, err)
		}
	}
	return c.pusher.Put(ctx, ref, rawManifest{raw: raw, mediaType: types.MediaType(desc.MediaType)})
}
