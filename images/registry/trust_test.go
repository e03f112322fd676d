package registry

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/sign"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func trustKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)).Public().(ed25519.PublicKey)
}

// TestTrustPolicyInRegistry: the policy of a repository's channels is an artifact in the
// repository, created by the first AddTrustKey, extended by later ones, whose blobs are the
// keys' PEM files.
func TestTrustPolicyInRegistry(t *testing.T) {
	cr := newChannelRepo(t)
	o := testOptions(t)
	if p, d, err := TrustPolicy(t.Context(), cr.repo, o); p != nil || d != "" || err != nil {
		t.Fatalf("TrustPolicy of a repository without one = %v, %q, %v", p, d, err)
	}
	k1, k2 := trustKey(1), trustKey(2)
	added, d1, err := AddTrustKey(t.Context(), cr.repo, k1, o)
	if err != nil || !added || d1 == "" {
		t.Fatalf("AddTrustKey = %v, %q, %v", added, d1, err)
	}
	if added, d, err := AddTrustKey(t.Context(), cr.repo, k1, o); err != nil || added || d != d1 {
		t.Errorf("adding a trusted key again = %v, %q, %v; want no change (%s)", added, d, err, d1)
	}
	if _, _, err := AddTrustKey(t.Context(), cr.repo, k2, o); err != nil {
		t.Fatal(err)
	}
	p, d2, err := TrustPolicy(t.Context(), cr.repo, o)
	if err != nil || p == nil || len(p.Keys) != 2 || !p.Keys[0].Equal(k1) || !p.Keys[1].Equal(k2) || d2 == d1 {
		t.Fatalf("TrustPolicy = %+v, %q, %v", p, d2, err)
	}
	if !strings.Contains(p.KeyFiles[1], TrustTag+" key "+sign.KeyID(k2)) {
		t.Errorf("key name %q", p.KeyFiles[1])
	}

	// What is in the registry: an artifact whose blobs are the .pub files.
	tag := mustRef(t, cr.repo+":"+TrustTag)
	desc, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != TrustArtifactType || len(m.Layers) != 2 || desc.Digest.String() != d2.String() {
		t.Fatalf("policy manifest %s = %s", desc.Digest, desc.Manifest)
	}
	for i, k := range []ed25519.PublicKey{k1, k2} {
		l := m.Layers[i]
		if l.MediaType != PublicKeyMediaType || l.Annotations[AnnotationKeyID] != sign.KeyID(k) || l.Digest != digest.FromBytes(sign.EncodePublicKey(k)) {
			t.Errorf("layer %d = %+v", i, l)
		}
	}

	// A key blob annotated as another key is refused.
	m.Layers[0].Annotations[AnnotationKeyID] = sign.KeyID(k2)
	raw, _ := json.Marshal(m)
	if err := remote.Put(tag, rawManifest{raw: raw, mediaType: types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := TrustPolicy(t.Context(), cr.repo, o); err == nil || !strings.Contains(err.Error(), "annotated as key") {
		t.Errorf("TrustPolicy with a mislabelled key: %v", err)
	}

	// A tag _trust that is not a policy is an error, and AddTrustKey leaves it alone.
	img, err := remote.Get(mustRef(t, cr.repo+"@"+cr.a.Digest().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(tag.(name.Tag), img); err != nil {
		t.Fatal(err)
	}
	if _, _, err := TrustPolicy(t.Context(), cr.repo, o); !errors.Is(err, ErrNotImgctl) || !strings.Contains(err.Error(), "not a trust policy") {
		t.Errorf("TrustPolicy of an image tagged %s: %v", TrustTag, err)
	}
	if _, _, err := AddTrustKey(t.Context(), cr.repo, k1, o); !errors.Is(err, ErrNotImgctl) {
		t.Errorf("AddTrustKey over an image: %v", err)
	}
	if now, err := remote.Head(tag); err != nil || now.Digest.String() != cr.a.Digest().String() {
		t.Errorf("tag %s moved: %v, %v", TrustTag, now, err)
	}
}
