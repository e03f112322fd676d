package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var signTime = time.Unix(1700000000, 0).UTC()

// testKey is a deterministic key pair (key generation is tested in keys_test.go).
func testKey(seed byte) (ed25519.PrivateKey, ed25519.PublicKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	return priv, priv.Public().(ed25519.PublicKey)
}

func policyOf(keys ...ed25519.PublicKey) *Policy { return &Policy{Keys: keys} }

func sign(t *testing.T, st *store.Store, img store.Image, key ed25519.PrivateKey) ocispec.Descriptor {
	t.Helper()
	desc, err := Sign(t.Context(), st, img, key, SignOptions{Creator: "imgctl test", Time: signTime})
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

func readBlob(t *testing.T, st *store.Store, d digest.Digest) []byte {
	t.Helper()
	rc, err := st.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readManifest(t *testing.T, st *store.Store, d digest.Digest) ocispec.Manifest {
	t.Helper()
	var m ocispec.Manifest
	if err := json.Unmarshal(readBlob(t, st, d), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// putSignature stores a signature manifest for subject built by hand from payload and sig,
// as someone tampering with the store would.
func putSignature(t *testing.T, st *store.Store, subject store.Image, payload, sig []byte, keyID string) ocispec.Descriptor {
	t.Helper()
	ctx := t.Context()
	pd, pn, err := st.WriteBlob(ctx, bytes.NewReader(payload), -1, "")
	if err != nil {
		t.Fatal(err)
	}
	empty := ocispec.DescriptorEmptyJSON
	empty.Data = nil
	if _, _, err := st.WriteBlob(ctx, strings.NewReader("{}"), 2, empty.Digest); err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)}
	if keyID != "" {
		ann[KeyIDAnnotation] = keyID
	}
	data, err := manifest.EncodeManifest(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       empty,
		Layers:       []ocispec.Descriptor{{MediaType: PayloadMediaType, Digest: pd, Size: pn, Annotations: ann}},
		Subject:      &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject.Digest(), Size: subject.Descriptor.Size},
	})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := st.PutReferrer(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

func storeClean(t *testing.T, st *store.Store) {
	t.Helper()
	problems, err := st.Verify(t.Context())
	if err != nil || len(problems) != 0 {
		t.Fatalf("store.Verify = %v, %v", problems, err)
	}
}

func TestSignAndVerify(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	other := storetest.PutVersion(t, st, "1.1.0", 20)
	priv, pub := testKey(1)

	desc := sign(t, st, img, priv)
	if desc.MediaType != ocispec.MediaTypeImageManifest || desc.ArtifactType != ArtifactType {
		t.Errorf("signature descriptor = %+v", desc)
	}
	if desc.Annotations[ocispec.AnnotationRefName] != "" {
		t.Errorf("signature index entry has a ref.name: %v", desc.Annotations)
	}
	if err := policyOf(pub).Verify(t.Context(), st, img); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// The other image is not signed by this.
	if err := policyOf(pub).Verify(t.Context(), st, other); !errors.Is(err, ErrUnsigned) {
		t.Errorf("Verify(unsigned image) = %v", err)
	}

	sigs, err := Signatures(t.Context(), st, img)
	if err != nil || len(sigs) != 1 {
		t.Fatalf("Signatures = %v, %v", sigs, err)
	}
	s := sigs[0]
	if s.Err != nil || s.Manifest.Digest != desc.Digest || s.KeyID != KeyID(pub) {
		t.Errorf("signature = %+v", s)
	}
	if s.Claim.Critical.Image.DockerManifestDigest != img.Digest().String() ||
		s.Claim.Critical.Identity.DockerReference != "node" || s.Claim.Creator() != "imgctl test" || !s.Claim.Time().Equal(signTime) {
		t.Errorf("claim = %+v", s.Claim)
	}
	if err := s.Verify(pub, img.Digest()); err != nil {
		t.Errorf("Signature.Verify: %v", err)
	}

	// The store is still sound and still lists just the images.
	storeClean(t, st)
	imgs, err := st.List(t.Context())
	if err != nil || len(imgs) != 2 {
		t.Fatalf("List = %v, %v", imgs, err)
	}
	if got, err := st.Resolve(t.Context(), "1.0.0"); err != nil || got.Digest() != img.Digest() {
		t.Errorf("Resolve(version) = %v, %v", got.Digest(), err)
	}
}

// TestSignatureFormat pins the payload bytes and the referrer manifest: the cosign formats.
func TestSignatureFormat(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv, pub := testKey(1)
	desc, err := Sign(t.Context(), st, img, priv, SignOptions{
		Identity: "registry.example.com/imgctl/node", Creator: "imgctl 1.2.3", Time: signTime,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, st, desc.Digest)
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != ArtifactType {
		t.Errorf("manifest header = %d %q %q", m.SchemaVersion, m.MediaType, m.ArtifactType)
	}
	if m.Config.MediaType != ocispec.MediaTypeEmptyJSON || m.Config.Digest != ocispec.DescriptorEmptyJSON.Digest || m.Config.Size != 2 {
		t.Errorf("config = %+v", m.Config)
	}
	if m.Subject == nil || m.Subject.Digest != img.Digest() || m.Subject.Size != img.Descriptor.Size ||
		m.Subject.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("subject = %+v, want the image %s", m.Subject, img.Digest())
	}
	if m.Annotations[ocispec.AnnotationCreated] != "2023-11-14T22:13:20Z" {
		t.Errorf("annotations = %v", m.Annotations)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.dev.cosign.simplesigning.v1+json" {
		t.Fatalf("layers = %+v", m.Layers)
	}
	l := m.Layers[0]
	payload := readBlob(t, st, l.Digest)
	want := `{"critical":{"identity":{"docker-reference":"registry.example.com/imgctl/node"},` +
		`"image":{"docker-manifest-digest":"` + img.Digest().String() + `"},` +
		`"type":"cosign container image signature"},` +
		`"optional":{"creator":"imgctl 1.2.3","timestamp":1700000000}}`
	if string(payload) != want {
		t.Errorf("payload\n%s\nwant\n%s", payload, want)
	}
	// What cosign's ED25519Verifier does: pure ed25519 over the payload bytes, the signature
	// base64 in dev.cosignproject.cosign/signature.
	sig, err := base64.StdEncoding.DecodeString(l.Annotations["dev.cosignproject.cosign/signature"])
	if err != nil || !ed25519.Verify(pub, payload, sig) {
		t.Errorf("signature annotation does not verify the payload: %v", err)
	}
	if l.Annotations[KeyIDAnnotation] != KeyID(pub) {
		t.Errorf("key ID annotation = %q", l.Annotations[KeyIDAnnotation])
	}
}

func TestSignIsIdempotent(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv1, pub1 := testKey(1)
	priv2, pub2 := testKey(2)
	first := sign(t, st, img, priv1)
	// Signing again later with the same key and identity adds nothing.
	again, err := Sign(t.Context(), st, img, priv1, SignOptions{Time: signTime.Add(time.Hour)})
	if err != nil || again.Digest != first.Digest {
		t.Fatalf("second Sign = %v, %v; want %s", again.Digest, err, first.Digest)
	}
	if sigs, _ := Signatures(t.Context(), st, img); len(sigs) != 1 {
		t.Errorf("%d signatures after signing twice with one key", len(sigs))
	}
	// Another key, or another identity, is a new signature.
	second := sign(t, st, img, priv2)
	third, err := Sign(t.Context(), st, img, priv1, SignOptions{Identity: "registry.example.com/node", Time: signTime})
	if err != nil {
		t.Fatal(err)
	}
	if second.Digest == first.Digest || third.Digest == first.Digest || third.Digest == second.Digest {
		t.Errorf("signatures share digests: %s %s %s", first.Digest, second.Digest, third.Digest)
	}
	sigs, err := Signatures(t.Context(), st, img)
	if err != nil || len(sigs) != 3 {
		t.Fatalf("Signatures = %d, %v", len(sigs), err)
	}
	for _, p := range []*Policy{policyOf(pub1), policyOf(pub2), policyOf(pub2, pub1)} {
		if err := p.Verify(t.Context(), st, img); err != nil {
			t.Errorf("Verify: %v", err)
		}
	}
	storeClean(t, st)
}

func TestVerifyWithAnotherKeyFails(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv1, _ := testKey(1)
	_, pub2 := testKey(2)
	_, pub3 := testKey(3)
	sign(t, st, img, priv1)
	err := policyOf(pub2, pub3).Verify(t.Context(), st, img)
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Verify = %v, want ErrUntrusted", err)
	}
	for _, want := range []string{img.Digest().String(), "no signature by a trusted key", "1 signature checked", "2 trusted keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if errors.Is(err, ErrBadSignature) || errors.Is(err, ErrUnsigned) {
		t.Errorf("error %v wraps the wrong sentinels", err)
	}
}

func TestVerifyUnsignedFails(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	_, pub := testKey(1)
	err := policyOf(pub).Verify(t.Context(), st, img)
	if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), img.Digest().String()) || !strings.Contains(err.Error(), "unsigned") {
		t.Fatalf("Verify = %v, want ErrUnsigned naming %s", err, img.Digest())
	}
}

// tamperSetup signs the image 1.0.0 in one store and returns a second store with the same
// image but no signature, and the genuine payload and signature.
func tamperSetup(t *testing.T) (*store.Store, store.Image, Signature, ed25519.PublicKey) {
	t.Helper()
	priv, pub := testKey(1)
	src := storetest.Open(t)
	srcImg := storetest.PutVersion(t, src, "1.0.0", 10)
	sign(t, src, srcImg, priv)
	sigs, err := Signatures(t.Context(), src, srcImg)
	if err != nil || len(sigs) != 1 {
		t.Fatalf("Signatures = %v, %v", sigs, err)
	}
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	if img.Digest() != srcImg.Digest() {
		t.Fatal("test images differ")
	}
	// The genuine signature copied verbatim verifies: the forging helper is sound.
	dst := storetest.Open(t)
	dstImg := storetest.PutVersion(t, dst, "1.0.0", 10)
	putSignature(t, dst, dstImg, sigs[0].Payload, sigs[0].Sig, sigs[0].KeyID)
	if err := policyOf(pub).Verify(t.Context(), dst, dstImg); err != nil {
		t.Fatalf("genuine signature, copied: %v", err)
	}
	return st, img, sigs[0], pub
}

func TestVerifyTamperedPayloadFails(t *testing.T) {
	st, img, genuine, pub := tamperSetup(t)
	// Same signature over a payload with a changed creator.
	tampered := bytes.Replace(genuine.Payload, []byte("imgctl test"), []byte("imgctl evil"), 1)
	if bytes.Equal(tampered, genuine.Payload) {
		t.Fatal("payload not changed")
	}
	desc := putSignature(t, st, img, tampered, genuine.Sig, genuine.KeyID)
	err := policyOf(pub).Verify(t.Context(), st, img)
	if !errors.Is(err, ErrBadSignature) {
		t.Fatalf("Verify = %v, want ErrBadSignature", err)
	}
	for _, want := range []string{img.Digest().String(), desc.Digest.String(), "altered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	storeClean(t, st)
}

func TestVerifyTamperedSignatureFails(t *testing.T) {
	st, img, genuine, pub := tamperSetup(t)
	sig := bytes.Clone(genuine.Sig)
	sig[10] ^= 1
	// Without the key ID claim the altered signature cannot be told from a foreign one.
	putSignature(t, st, img, genuine.Payload, sig, "")
	err := policyOf(pub).Verify(t.Context(), st, img)
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), img.Digest().String()) {
		t.Fatalf("Verify = %v, want ErrUntrusted", err)
	}
}

func TestVerifyMovedSignatureFails(t *testing.T) {
	st := storetest.Open(t)
	a := storetest.PutVersion(t, st, "1.0.0", 10)
	b := storetest.PutVersion(t, st, "1.1.0", 20)
	priv, pub := testKey(1)
	desc := sign(t, st, a, priv)

	// The same signature manifest, its subject pointed at b.
	m := readManifest(t, st, desc.Digest)
	m.Subject = &ocispec.Descriptor{MediaType: b.Descriptor.MediaType, Digest: b.Digest(), Size: b.Descriptor.Size}
	data, err := manifest.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutReferrer(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	if sigs, err := Signatures(t.Context(), st, b); err != nil || len(sigs) != 1 {
		t.Fatalf("Signatures(b) = %v, %v", sigs, err)
	}
	err = policyOf(pub).Verify(t.Context(), st, b)
	if !errors.Is(err, ErrBadSignature) {
		t.Fatalf("Verify(b) = %v, want ErrBadSignature", err)
	}
	if !strings.Contains(err.Error(), "payload signs image \""+a.Digest().String()+"\", not "+b.Digest().String()) {
		t.Errorf("error %q does not say which image the payload signs", err)
	}
	if err := policyOf(pub).Verify(t.Context(), st, a); err != nil {
		t.Errorf("Verify(a) = %v", err)
	}
	storeClean(t, st)
}

func TestVerifyDamagedSignatureFails(t *testing.T) {
	t.Run("payload blob missing", func(t *testing.T) {
		st := storetest.Open(t)
		img := storetest.PutVersion(t, st, "1.0.0", 10)
		priv, pub := testKey(1)
		desc := sign(t, st, img, priv)
		m := readManifest(t, st, desc.Digest)
		p, err := st.BlobPath(m.Layers[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		err = policyOf(pub).Verify(t.Context(), st, img)
		if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), img.Digest().String()) ||
			!strings.Contains(err.Error(), "signature "+desc.Digest.String()+": blob "+m.Layers[0].Digest.String()+": not found") {
			t.Fatalf("Verify = %v, want ErrBadSignature saying the payload is missing", err)
		}
		sigs, err := Signatures(t.Context(), st, img)
		if err != nil || len(sigs) != 1 || !errors.Is(sigs[0].Err, store.ErrNotFound) {
			t.Fatalf("Signatures = %+v, %v", sigs, err)
		}
	})
	t.Run("signature not base64", func(t *testing.T) {
		st, img, genuine, pub := tamperSetup(t)
		desc := putSignature(t, st, img, genuine.Payload, nil, genuine.KeyID)
		m := readManifest(t, st, desc.Digest)
		m.Layers[0].Annotations[SignatureAnnotation] = "%%%"
		data, _ := manifest.EncodeManifest(m)
		if _, err := st.PutReferrer(t.Context(), data); err != nil {
			t.Fatal(err)
		}
		err := policyOf(pub).Verify(t.Context(), st, img)
		if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "not base64") {
			t.Fatalf("Verify = %v", err)
		}
	})
	t.Run("trusted key signed a payload of another type", func(t *testing.T) {
		st := storetest.Open(t)
		img := storetest.PutVersion(t, st, "1.0.0", 10)
		priv, pub := testKey(1)
		payload := []byte(`{"critical":{"identity":{"docker-reference":"node"},"image":{"docker-manifest-digest":"` +
			img.Digest().String() + `"},"type":"atomic container signature"},"optional":null}`)
		putSignature(t, st, img, payload, ed25519.Sign(priv, payload), "")
		err := policyOf(pub).Verify(t.Context(), st, img)
		if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "payload type") {
			t.Fatalf("Verify = %v", err)
		}
	})
	t.Run("a good signature beside a damaged one suffices", func(t *testing.T) {
		st, img, genuine, pub := tamperSetup(t)
		putSignature(t, st, img, genuine.Payload, genuine.Sig[:10], genuine.KeyID)
		if err := policyOf(pub).Verify(t.Context(), st, img); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("damaged only: Verify = %v", err)
		}
		putSignature(t, st, img, genuine.Payload, genuine.Sig, genuine.KeyID)
		if err := policyOf(pub).Verify(t.Context(), st, img); err != nil {
			t.Fatalf("with a good one too: Verify = %v", err)
		}
	})
}

func TestVerifyRecomputesManifestDigest(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv, pub := testKey(1)
	sign(t, st, img, priv)

	// An image value that lies about its size.
	liar := img
	liar.Descriptor.Size++
	if err := policyOf(pub).Verify(t.Context(), st, liar); !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("Verify(wrong size) = %v", err)
	}
	// The manifest blob rewritten on disk (same length, one byte changed).
	p, err := st.BlobPath(img.Digest())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-2] ^= 0x20
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	err = policyOf(pub).Verify(t.Context(), st, img)
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), img.Digest().String()) {
		t.Errorf("Verify(corrupt manifest) = %v, want ErrDigestMismatch", err)
	}
	if _, err := Sign(t.Context(), st, img, priv, SignOptions{}); !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("Sign(corrupt manifest) = %v, want ErrDigestMismatch", err)
	}
}

func TestSignErrors(t *testing.T) {
	st := storetest.Open(t)
	priv, _ := testKey(1)
	elsewhere := storetest.PutVersion(t, storetest.Open(t), "1.0.0", 10)
	if _, err := Sign(t.Context(), st, elsewhere, priv, SignOptions{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Sign(image of another store) = %v, want ErrNotFound", err)
	}
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	if _, err := Sign(t.Context(), st, img, priv[:10], SignOptions{}); err == nil || !strings.Contains(err.Error(), "private key has 10 bytes") {
		t.Errorf("Sign(short key) = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Sign(ctx, st, img, priv, SignOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Sign(cancelled) = %v", err)
	}
	if sigs, err := Signatures(t.Context(), st, img); err != nil || len(sigs) != 0 {
		t.Errorf("failed signings left signatures: %v, %v", sigs, err)
	}
	// The default time is now.
	before := time.Now().Add(-time.Second)
	if _, err := Sign(t.Context(), st, img, priv, SignOptions{}); err != nil {
		t.Fatal(err)
	}
	sigs, err := Signatures(t.Context(), st, img)
	if err != nil || len(sigs) != 1 || sigs[0].Claim.Time().Before(before.Truncate(time.Second)) || sigs[0].Claim.Creator() != "imgctl" {
		t.Errorf("default options: %+v, %v", sigs, err)
	}
}

func TestPolicyNilAndHook(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	var none *Policy
	if none.Hook(st) != nil {
		t.Error("nil policy has a hook")
	}
	if err := none.Verify(t.Context(), st, img); err == nil {
		t.Error("nil policy verified an image")
	}
	if err := (&Policy{}).Verify(t.Context(), st, img); err == nil || !strings.Contains(err.Error(), "no keys") {
		t.Errorf("empty policy: %v", err)
	}
	if err := policyOf(ed25519.PublicKey{1, 2, 3}).Verify(t.Context(), st, img); err == nil || !strings.Contains(err.Error(), "not an ed25519 public key") {
		t.Errorf("malformed key: %v", err)
	}
	priv, pub := testKey(1)
	hook := policyOf(pub).Hook(st)
	if err := hook(t.Context(), img); !errors.Is(err, ErrUnsigned) {
		t.Errorf("hook before signing = %v", err)
	}
	sign(t, st, img, priv)
	if err := hook(t.Context(), img); err != nil {
		t.Errorf("hook after signing = %v", err)
	}
}
