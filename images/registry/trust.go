package registry

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/sign"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The trust policy of a repository's channels lives in the repository, so that every store
// that promotes there (a new CI runner's too) applies the same one: an OCI artifact tagged
// TrustTag, of artifactType TrustArtifactType, whose config is the empty JSON descriptor and
// whose layers are the trusted public keys, one blob each, byte for byte the PKIX PEM file
// imgctl key generate writes (media type PublicKeyMediaType, annotated with the key's KeyID
// and titled KEYID.pub). Anyone can check it with standard tools: `oras pull REPO:_trust`
// (or crane blob) yields the .pub files, and the key ID is the SHA-256 of the key's DER.
// The manifest carries no timestamp, so a set of keys always has the same digest.
//
// Whoever can push to the repository can change it, as they can move its channels: it
// protects against stores without a policy, not against the repository's writers.
const (
	// TrustTag is the tag of the policy. It starts with '_', which neither an image version's
	// tag (Tag) nor a channel's tags can, so it never collides with them.
	TrustTag           = "_trust"
	TrustArtifactType  = "application/vnd.imgctl.trust-policy.v1"
	PublicKeyMediaType = "application/vnd.imgctl.public-key.v1+pem"
	// AnnotationKeyID, on a key's layer descriptor, is sign.KeyID of the key.
	AnnotationKeyID = "dev.imgctl.key-id"
)

// maxKeyBlob bounds a public key blob (an ed25519 PEM file is 113 bytes); maxKeys the keys a
// policy may list.
const (
	maxKeyBlob = 64 << 10
	maxKeys    = 256
)

// TrustPolicy reads the trust policy of repo's channels (see TrustTag) and returns it with the
// digest of its manifest. A repository without one returns nil, "", nil: nothing is enforced,
// and the caller should say so. A tag TrustTag that is not a valid policy (another kind of
// manifest, no keys, a blob that is not an ed25519 public key or whose key ID is not the one
// annotated) is an error, never "no policy".
func TrustPolicy(ctx context.Context, repo string, o Options) (*sign.Policy, digest.Digest, error) {
	r, err := parseRepo(repo, o)
	if err != nil {
		return nil, "", fmt.Errorf("reading trust policy: %w", err)
	}
	c, err := newClient(ctx, r.Registry, o)
	if err != nil {
		return nil, "", fmt.Errorf("reading trust policy of %s: %w", r, err)
	}
	keys, d, err := c.readTrust(ctx, r.Tag(TrustTag))
	if err != nil || d == "" {
		return nil, "", err
	}
	p := &sign.Policy{Keys: keys}
	for _, k := range keys {
		p.KeyFiles = append(p.KeyFiles, fmt.Sprintf("%s:%s key %s", r, TrustTag, sign.KeyID(k)))
	}
	c.log.Debug("read trust policy", "repo", r.String(), "policy", d, "keys", len(keys))
	return p, d, nil
}

// AddTrustKey makes the trust policy of repo's channels trust pub, creating it if there is
// none, and returns whether it changed and the policy's digest. Adding a key already trusted
// changes nothing. An existing TrustTag that is not a valid policy is an error and left alone.
// A registry cannot compare-and-swap a tag: AddTrustKey checks just before and after writing
// that the tag still names the policy it extended, and otherwise fails with an error wrapping
// channel.ErrConflict (retry).
func AddTrustKey(ctx context.Context, repo string, pub ed25519.PublicKey, o Options) (added bool, d digest.Digest, err error) {
	r, err := parseRepo(repo, o)
	if err != nil {
		return false, "", fmt.Errorf("trusting key: %w", err)
	}
	if len(pub) != ed25519.PublicKeySize {
		return false, "", fmt.Errorf("trusting key in %s: %d bytes, not an ed25519 public key", r, len(pub))
	}
	tag := r.Tag(TrustTag)
	fail := func(format string, args ...any) (bool, digest.Digest, error) {
		return false, "", fmt.Errorf("trusting key %s in %s: %w", sign.KeyID(pub), tag, fmt.Errorf(format, args...))
	}
	c, err := newClient(ctx, r.Registry, o)
	if err != nil {
		return fail("%w", err)
	}
	keys, cur, err := c.readTrust(ctx, tag)
	if err != nil {
		return fail("%w", err)
	}
	for _, k := range keys {
		if k.Equal(pub) {
			return false, cur, nil
		}
	}
	if len(keys) >= maxKeys {
		return fail("the policy already lists %d keys, the most imgctl reads", len(keys))
	}
	keys = append(keys, pub)

	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: TrustArtifactType,
		Config:       ocispec.DescriptorEmptyJSON,
	}
	m.Config.Data = nil
	blobs := [][]byte{[]byte("{}")}
	for _, k := range keys {
		data := sign.EncodePublicKey(k)
		id := sign.KeyID(k)
		m.Layers = append(m.Layers, ocispec.Descriptor{
			MediaType:   PublicKeyMediaType,
			Digest:      digest.FromBytes(data),
			Size:        int64(len(data)),
			Annotations: map[string]string{AnnotationKeyID: id, ocispec.AnnotationTitle: id + ".pub"},
		})
		blobs = append(blobs, data)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return fail("encoding manifest: %w", err)
	}
	d = digest.FromBytes(raw)
	for i, b := range blobs {
		mt := PublicKeyMediaType
		if i == 0 {
			mt = ocispec.MediaTypeEmptyJSON
		}
		if err := c.pusher.Upload(ctx, r, static.NewLayer(b, types.MediaType(mt))); err != nil {
			return fail("blob %s: %w", digest.FromBytes(b), err)
		}
	}
	// The tag must still name the policy read above (or still be absent).
	if now, err := c.tagDigest(ctx, tag); err != nil {
		return fail("%w", err)
	} else if now != cur {
		return fail("the policy changed from %s to %s meanwhile (another writer): %w", showHead(cur), showHead(now), channel.ErrConflict)
	}
	if err := c.pusher.Put(ctx, tag, rawManifest{raw: raw, mediaType: types.MediaType(m.MediaType)}); err != nil {
		return fail("manifest %s: %w", d, err)
	}
	if now, err := c.tagDigest(ctx, tag); err != nil {
		return fail("reading back: %w", err)
	} else if now != d {
		return fail("%s was replaced by %s while it was written (another writer): %w", d, now, channel.ErrConflict)
	}
	c.log.Info("trusted key", "repo", r.String(), "key", sign.KeyID(pub), "policy", d, "keys", len(keys))
	return true, d, nil
}

// tagDigest is the digest tag names, or "" if it does not exist.
func (c *client) tagDigest(ctx context.Context, tag name.Tag) (digest.Digest, error) {
	desc, err := c.puller.Head(ctx, tag)
	if isNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", tag, err)
	}
	return digest.Digest(desc.Digest.String()), nil
}

// readTrust reads and checks the policy tagged tag: its keys and manifest digest, or nothing
// and "" if the tag does not exist.
func (c *client) readTrust(ctx context.Context, tag name.Tag) ([]ed25519.PublicKey, digest.Digest, error) {
	desc, err := c.puller.Get(ctx, tag)
	if isNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading trust policy %s: %w", tag, err)
	}
	d, err := digest.Parse(desc.Digest.String())
	if err != nil {
		return nil, "", fmt.Errorf("trust policy %s: %w", tag, err)
	}
	fail := func(format string, args ...any) ([]ed25519.PublicKey, digest.Digest, error) {
		return nil, "", fmt.Errorf("trust policy %s (manifest %s): %w", tag, d, fmt.Errorf(format, args...))
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return fail("%w", err)
	}
	if m.ArtifactType != TrustArtifactType {
		var probe struct {
			Manifests []json.RawMessage `json:"manifests"`
		}
		_ = json.Unmarshal(desc.Manifest, &probe)
		return fail("not a trust policy (artifactType %s): it is %s: %w", TrustArtifactType,
			describe(m.MediaType, m.ArtifactType, m.Config.MediaType, probe.Manifests != nil), ErrNotImgctl)
	}
	if len(m.Layers) == 0 {
		return fail("it lists no keys: a policy must trust at least one key")
	}
	if len(m.Layers) > maxKeys {
		return fail("it lists %d keys, more than the %d imgctl reads", len(m.Layers), maxKeys)
	}
	var keys []ed25519.PublicKey
	for i, l := range m.Layers {
		if l.MediaType != PublicKeyMediaType {
			return fail("layer %d (%s) has media type %q, want %q", i, l.Digest, l.MediaType, PublicKeyMediaType)
		}
		data, err := c.fetchSmall(ctx, tag.Context(), l, maxKeyBlob)
		if err != nil {
			return fail("key blob %s: %w", l.Digest, err)
		}
		k, err := sign.ParsePublicKey(data, "blob "+l.Digest.String())
		if err != nil {
			return fail("%w", err)
		}
		if want := l.Annotations[AnnotationKeyID]; want != "" && want != sign.KeyID(k) {
			return fail("key blob %s holds key %s, but is annotated as key %s", l.Digest, sign.KeyID(k), want)
		}
		keys = append(keys, k)
	}
	return keys, d, nil
}
