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
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
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

// pushSignatures copies the signature referrers st holds for img to repo, byte for byte, as
// OCI 1.1 referrers (what push does with signatures).
func pushSignatures(t *testing.T, st *store.Store, img store.Image, repo string) {
	t.Helper()
	refs, err := st.Referrers(t.Context(), img.Digest(), sign.ArtifactType)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.NewRepository(repo)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		raw, err := readStoreBlob(t.Context(), st, ref.Descriptor)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range append([]ocispec.Descriptor{ref.Manifest.Config}, ref.Manifest.Layers...) {
			data, err := readStoreBlob(t.Context(), st, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteLayer(r, static.NewLayer(data, types.MediaType(d.MediaType))); err != nil {
				t.Fatal(err)
			}
		}
		if err := remote.Put(r.Digest(ref.Descriptor.Digest.String()), rawManifest{raw: raw, mediaType: types.OCIManifestSchema1}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRegistrySignatures: the signatures of an image pushed to a repository are read from its
// referrers and checked against a policy without any local store.
func TestRegistrySignatures(t *testing.T) {
	reg := newRegistry(t)
	repo := reg.host + "/imgctl/node"
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	other := storetest.PutVersion(t, st, "1.1.0", 11)
	for _, i := range []store.Image{img, other} {
		if _, err := Push(t.Context(), st, i, repo, testOptions(t)); err != nil {
			t.Fatal(err)
		}
	}
	images := &Images{Repo: repo, Options: testOptions(t)}
	priv1 := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	trusted := &sign.Policy{Keys: []ed25519.PublicKey{trustKey(1)}}
	untrusted := &sign.Policy{Keys: []ed25519.PublicKey{trustKey(2)}}

	sigs, err := images.Signatures(t.Context(), img)
	if err != nil || len(sigs) != 0 {
		t.Fatalf("signatures of an unsigned image = %v, %v", sigs, err)
	}
	if err := trusted.VerifySignatures(img.Digest(), sigs); !errors.Is(err, sign.ErrUnsigned) {
		t.Errorf("VerifySignatures(unsigned) = %v", err)
	}

	if _, err := sign.Sign(t.Context(), st, img, priv1, sign.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	pushSignatures(t, st, img, repo)
	if sigs, err = images.Signatures(t.Context(), img); err != nil || len(sigs) != 1 || sigs[0].Err != nil {
		t.Fatalf("signatures = %+v, %v", sigs, err)
	}
	if err := trusted.VerifySignatures(img.Digest(), sigs); err != nil {
		t.Errorf("VerifySignatures by the trusted key: %v", err)
	}
	if err := untrusted.VerifySignatures(img.Digest(), sigs); !errors.Is(err, sign.ErrUntrusted) {
		t.Errorf("VerifySignatures by another key: %v", err)
	}
	// The signature of one image does not count for another.
	if sigs, err := images.Signatures(t.Context(), other); err != nil || len(sigs) != 0 {
		t.Errorf("signatures of the other image = %v, %v", sigs, err)
	}
	if err := trusted.VerifySignatures(other.Digest(), sigs); !errors.Is(err, sign.ErrBadSignature) {
		t.Errorf("VerifySignatures of img's signature for another image: %v", err)
	}
}
