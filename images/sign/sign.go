// Package sign signs imgctl images with ed25519 keys and checks them against a trust policy.
//
// A signature is a cosign "simple signing" payload naming the image's manifest digest, signed
// with pure ed25519 (no pre-hash) and stored in the image's store as an OCI 1.1 referrer: an
// image manifest of artifactType ArtifactType whose subject is the image manifest, whose one
// layer is the payload blob (media type PayloadMediaType) carrying the base64 signature in the
// annotation SignatureAnnotation, and which is listed in index.json so that it is reachable.
// These are the media types, annotation and artifact type cosign uses. `imgctl push` (package
// registry) sends a signature along with its image, both as this referrer and in the tag
// sha256-<hex>.sig that cosign reads by default, so that
// `cosign verify --key imgctl.pub --insecure-ignore-tlog=true REGISTRY/REPO@sha256:…` (cosign
// v2.6 reads ed25519 PKIX keys) accepts it, with or without --experimental-oci11
// (test/registry_e2e_test.go checks this with the real cosign).
//
// Keys are ed25519 (GenerateKey): imgctl.key, an unencrypted PKCS#8 PEM file, and imgctl.pub,
// a PKIX PEM file. A store's trust policy is STOREDIR/trust.json (PolicyForStore), listing the
// public keys whose signature an image needs, e.g. before a channel may point to it (see
// Policy.Hook):
//
//	{"publicKeys": ["keys/release.pub"]}
package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types, annotations and payload type of a signature.
const (
	// ArtifactType is the artifactType of a signature manifest: cosign's, for signatures stored
	// as OCI 1.1 referrers.
	ArtifactType = "application/vnd.dev.cosign.artifact.sig.v1+json"
	// PayloadMediaType is the media type of the payload blob (cosign's simple signing).
	PayloadMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	// SignatureAnnotation, on the payload's layer descriptor, holds the base64 (standard
	// encoding, padded) ed25519 signature of the payload bytes.
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	// KeyIDAnnotation, on the payload's layer descriptor, is the KeyID of the signing key. It
	// is not signed: Verify uses it only to tell an altered signature from a foreign one.
	KeyIDAnnotation = "dev.imgctl.signature.key"
	// PayloadType is the payload's critical.type.
	PayloadType = "cosign container image signature"
)

// maxPayload bounds the payload blobs read. A payload is a few hundred bytes.
const maxPayload = 64 << 10

// maxManifest bounds the image manifests re-read to check their digest (as the store does).
const maxManifest = 4 << 20

// Errors callers branch on (test with errors.Is).
var (
	// ErrUnsigned: the image has no signature at all.
	ErrUnsigned = errors.New("unsigned")
	// ErrUntrusted: the image has signatures, but none verifies with a trusted key.
	ErrUntrusted = errors.New("no signature by a trusted key")
	// ErrBadSignature: a signature is damaged, altered, or signed by a trusted key for
	// something other than the image (a signature copied from another image).
	ErrBadSignature = errors.New("bad signature")
	// ErrKeyMismatch: the signature does not verify with the key given (another key made it,
	// or its payload or signature was altered).
	ErrKeyMismatch = errors.New("signature does not verify with this key")
)

// Payload is cosign's "simple signing" payload (the containers-signature JSON format with
// critical.type PayloadType).
type Payload struct {
	Critical Critical `json:"critical"`
	// Optional is metadata, signed but not checked by Verify: imgctl writes "creator" (a
	// string) and "timestamp" (Unix seconds), as the containers-signature format defines them.
	Optional map[string]any `json:"optional"`
}

// Critical is what a signature asserts; a verifier must check it.
type Critical struct {
	Identity Identity `json:"identity"`
	Image    ImageRef `json:"image"`
	Type     string   `json:"type"`
}

// Identity is the name the signer claims for the image.
type Identity struct {
	DockerReference string `json:"docker-reference"`
}

// ImageRef names the signed image by its manifest digest.
type ImageRef struct {
	DockerManifestDigest string `json:"docker-manifest-digest"`
}

// Creator is optional.creator, or "".
func (p Payload) Creator() string {
	s, _ := p.Optional["creator"].(string)
	return s
}

// Time is optional.timestamp, or the zero time.
func (p Payload) Time() time.Time {
	// encoding/json decodes every number as float64; Unix seconds fit exactly.
	if v, ok := p.Optional["timestamp"].(float64); ok {
		return time.Unix(int64(v), 0).UTC()
	}
	return time.Time{}
}

// decodePayload parses a payload strictly: the containers-signature format says a consumer
// must reject unknown fields in the critical section.
func decodePayload(data []byte) (Payload, error) {
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Payload{}, fmt.Errorf("payload is not a simple signing document: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Payload{}, errors.New("payload is not a simple signing document: data after the JSON object")
	}
	return p, nil
}

// SignOptions are the choices of Sign; the zero value is valid.
type SignOptions struct {
	// Identity is the claimed name written as critical.identity.docker-reference, e.g.
	// "registry.example.com/imgctl/node" for an image that will be pushed there. Verify does
	// not check it (nor does cosign by default). Default: the image's name.
	Identity string
	// Creator is optional.creator, e.g. "imgctl 1.2.3". Default: "imgctl".
	Creator string
	// Time is optional.timestamp (and the manifest's created annotation). Default: now.
	Time time.Time
}

// Sign signs img, which must be an image in st, with key and stores the signature as a
// referrer of the image (see the package comment), returning the signature manifest's
// descriptor. If st already holds a signature of img by the same key with the same identity,
// that is returned and nothing is written.
func Sign(ctx context.Context, st *store.Store, img store.Image, key ed25519.PrivateKey, o SignOptions) (ocispec.Descriptor, error) {
	d := img.Digest()
	if len(key) != ed25519.PrivateKeySize {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: private key has %d bytes, want %d", d, len(key), ed25519.PrivateKeySize)
	}
	if err := checkManifest(ctx, st, img); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: %w", d, err)
	}
	if o.Identity == "" {
		o.Identity = img.Config.Name
	}
	if o.Identity == "" {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: no identity: the image has no name and none was given", d)
	}
	if o.Creator == "" {
		o.Creator = "imgctl"
	}
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	pub := key.Public().(ed25519.PublicKey)

	existing, err := Signatures(ctx, st, img)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: %w", d, err)
	}
	for _, s := range existing {
		if s.Verify(pub, d) == nil && s.Claim.Critical.Identity.DockerReference == o.Identity {
			return s.Manifest, nil
		}
	}

	payload, err := json.Marshal(Payload{
		Critical: Critical{
			Identity: Identity{DockerReference: o.Identity},
			Image:    ImageRef{DockerManifestDigest: d.String()},
			Type:     PayloadType,
		},
		Optional: map[string]any{
			"creator":   o.Creator,
			"timestamp": o.Time.Unix(),
		},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: encoding payload: %w", d, err)
	}
	sig := ed25519.Sign(key, payload)

	pd, pn, err := st.WriteBlob(ctx, bytes.NewReader(payload), int64(len(payload)), "")
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: storing payload: %w", d, err)
	}
	empty := ocispec.DescriptorEmptyJSON
	empty.Data = nil
	if _, _, err := st.WriteBlob(ctx, bytes.NewReader([]byte("{}")), empty.Size, empty.Digest); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: storing empty config: %w", d, err)
	}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       empty,
		Layers: []ocispec.Descriptor{{
			MediaType: PayloadMediaType,
			Digest:    pd,
			Size:      pn,
			Annotations: map[string]string{
				SignatureAnnotation: base64.StdEncoding.EncodeToString(sig),
				KeyIDAnnotation:     KeyID(pub),
			},
		}},
		Subject: &ocispec.Descriptor{
			MediaType: img.Descriptor.MediaType,
			Digest:    d,
			Size:      img.Descriptor.Size,
		},
		Annotations: map[string]string{
			ocispec.AnnotationCreated: o.Time.UTC().Format(time.RFC3339),
		},
	}
	data, err := manifest.EncodeManifest(m)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: %w", d, err)
	}
	desc, err := st.PutReferrer(ctx, data)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("signing image %s: %w", d, err)
	}
	return desc, nil
}

// checkManifest re-reads img's manifest from st and recomputes its digest, so that a
// signature is only ever made or accepted for a manifest that the store holds and that
// really has the digest img claims.
func checkManifest(ctx context.Context, st *store.Store, img store.Image) error {
	d := img.Digest()
	if err := d.Validate(); err != nil {
		return fmt.Errorf("image digest %q: %w", d, err)
	}
	rc, err := st.OpenBlob(ctx, d)
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	if len(data) > maxManifest {
		return fmt.Errorf("image manifest %s: larger than %d bytes", d, maxManifest)
	}
	if got := digest.SHA256.FromBytes(data); got != d {
		return fmt.Errorf("image manifest %s: content hashes to %s: %w", d, got, store.ErrDigestMismatch)
	}
	if img.Descriptor.Size != int64(len(data)) {
		return fmt.Errorf("image manifest %s: %d bytes, descriptor says %d: %w", d, len(data), img.Descriptor.Size, store.ErrDigestMismatch)
	}
	return nil
}

// Signature is one signature of an image as stored: nothing in it is verified. Call Verify
// (or Policy.Verify) to check it.
type Signature struct {
	// Manifest is the signature manifest's entry in index.json.
	Manifest ocispec.Descriptor
	// Layer is the payload blob's descriptor, which carries the signature annotations.
	Layer ocispec.Descriptor
	// Payload is the signed payload blob as stored, and Claim its decoding (zero if it does
	// not decode).
	Payload []byte
	Claim   Payload
	// Sig is the ed25519 signature from SignatureAnnotation.
	Sig []byte
	// KeyID is the signer's key as the KeyIDAnnotation claims it (unverified; "" if absent).
	KeyID string
	// Err says why the signature cannot be checked at all (its payload blob is missing or
	// corrupt, its signature annotation missing or malformed); Verify then fails with it.
	Err error
}

// Verify checks that s is a signature of the image with manifest digest img made with pub. It
// returns nil, an error wrapping ErrKeyMismatch when the signature does not verify with pub,
// or one wrapping ErrBadSignature when s cannot be checked or pub signed a payload that does
// not bind img (e.g. a signature copied from another image).
func (s Signature) Verify(pub ed25519.PublicKey, img digest.Digest) error {
	if s.Err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, s.Err)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("public key has %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	if !ed25519.Verify(pub, s.Payload, s.Sig) {
		return ErrKeyMismatch
	}
	p, err := decodePayload(s.Payload)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	if p.Critical.Type != PayloadType {
		return fmt.Errorf("%w: payload type %q, want %q", ErrBadSignature, p.Critical.Type, PayloadType)
	}
	if p.Critical.Image.DockerManifestDigest != img.String() {
		return fmt.Errorf("%w: payload signs image %q, not %s", ErrBadSignature, p.Critical.Image.DockerManifestDigest, img)
	}
	return nil
}

// Signatures returns the signatures stored for img: one per payload layer of each signature
// manifest whose subject is img, in index order. A signature that cannot be read is returned
// with Err set; the error is for failures to read the store itself.
func Signatures(ctx context.Context, st *store.Store, img store.Image) ([]Signature, error) {
	refs, err := st.Referrers(ctx, img.Digest(), ArtifactType)
	if err != nil {
		return nil, fmt.Errorf("listing signatures: %w", err)
	}
	var out []Signature
	for _, r := range refs {
		for _, l := range r.Manifest.Layers {
			if l.MediaType != PayloadMediaType {
				continue
			}
			payload, err := readPayload(ctx, st, l)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			out = append(out, NewSignature(r.Descriptor, l, payload, err))
		}
	}
	return out, nil
}

// NewSignature is the Signature of payload layer l of signature manifest m, whose payload blob
// (read and checked against l's digest and size by the caller) is payload, or could not be read
// (readErr). Nothing is verified: the signature annotation is decoded, or Err says why not.
func NewSignature(m, l ocispec.Descriptor, payload []byte, readErr error) Signature {
	s := Signature{Manifest: m, Layer: l, KeyID: l.Annotations[KeyIDAnnotation], Payload: payload, Err: readErr}
	if s.Err == nil {
		s.Sig, s.Err = layerSignature(l)
	}
	if s.Err == nil {
		s.Claim, _ = decodePayload(s.Payload) // a bad one is reported by Verify
	}
	return s
}

func readPayload(ctx context.Context, st *store.Store, l ocispec.Descriptor) ([]byte, error) {
	if l.Size < 0 || l.Size > maxPayload {
		return nil, fmt.Errorf("payload of %d bytes (at most %d accepted)", l.Size, maxPayload)
	}
	rc, err := st.OpenBlob(ctx, l.Digest)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, l.Size+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != l.Size {
		return nil, fmt.Errorf("payload blob is not %d bytes: %w", l.Size, store.ErrDigestMismatch)
	}
	if digest.SHA256.FromBytes(data) != l.Digest {
		return nil, fmt.Errorf("payload blob does not hash to %s: %w", l.Digest, store.ErrDigestMismatch)
	}
	return data, nil
}

func layerSignature(l ocispec.Descriptor) ([]byte, error) {
	b64, ok := l.Annotations[SignatureAnnotation]
	if !ok {
		return nil, fmt.Errorf("no %s annotation", SignatureAnnotation)
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%s annotation is not base64: %w", SignatureAnnotation, err)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%s annotation holds %d bytes, not an ed25519 signature (%d bytes)", SignatureAnnotation, len(sig), ed25519.SignatureSize)
	}
	return sig, nil
}
