package registry

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"io"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

func signWith(t *testing.T, st *store.Store, img store.Image, seed byte) ed25519.PublicKey {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	if _, err := sign.Sign(t.Context(), st, img, priv, sign.SignOptions{Time: time.Unix(1795651200+int64(seed), 0)}); err != nil {
		t.Fatal(err)
	}
	return priv.Public().(ed25519.PublicKey)
}

// cosignSignatures reads tag sha256-<hex>.sig as cosign does (an image whose layers are the
// signed payloads, each with its signature in an annotation) and returns, per layer, the payload
// and the decoded signature.
func cosignSignatures(t *testing.T, repo string, img store.Image) (payloads, sigs [][]byte) {
	t.Helper()
	tag, err := name.NewTag(repo+":sha256-"+img.Digest().Encoded()+".sig", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := remote.Image(tag)
	if err != nil {
		t.Fatalf("cosign signature tag %s: %v", tag, err)
	}
	m, err := ri.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := ri.ConfigFile() // cosign sign appends to this image: its config must be one
	if err != nil {
		t.Fatalf("config of %s: %v", tag, err)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		t.Errorf("config of %s lists %d diff_ids for %d layers", tag, len(cf.RootFS.DiffIDs), len(m.Layers))
	}
	for i, l := range m.Layers {
		if string(l.MediaType) != sign.PayloadMediaType {
			t.Errorf("layer %d of %s has media type %s", i, tag, l.MediaType)
		}
		if i < len(cf.RootFS.DiffIDs) && cf.RootFS.DiffIDs[i] != l.Digest {
			t.Errorf("diff_id %d of %s is %s, layer is %s", i, tag, cf.RootFS.DiffIDs[i], l.Digest)
		}
		layer, err := ri.LayerByDigest(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := layer.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		p, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		s, err := base64.StdEncoding.DecodeString(l.Annotations[sign.SignatureAnnotation])
		if err != nil {
			t.Fatalf("layer %d of %s: signature annotation: %v", i, tag, err)
		}
		payloads, sigs = append(payloads, p), append(sigs, s)
	}
	return payloads, sigs
}

// verifiedBy counts the cosign signatures that verify with pub and sign img.
func verifiedBy(payloads, sigs [][]byte, pub ed25519.PublicKey, img store.Image) int {
	n := 0
	for i := range payloads {
		if ed25519.Verify(pub, payloads[i], sigs[i]) && bytes.Contains(payloads[i], []byte(`"docker-manifest-digest":"`+img.Digest().String()+`"`)) {
			n++
		}
	}
	return n
}

// TestPushSignatures: Push sends the image's signatures along, as OCI 1.1 referrers (manifests
// unchanged) and in the tag sha256-<hex>.sig that `cosign verify` reads; a later signature is
// added to that tag without losing the earlier ones; a push with nothing new writes nothing.
func TestPushSignatures(t *testing.T) {
	reg := newRegistry(t)
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, testVersion, 1795651200)
	repo := reg.host + "/imgctl/node"
	pub1 := signWith(t, st, img, 1)
	sigs1, err := sign.Signatures(t.Context(), st, img)
	if err != nil || len(sigs1) != 1 {
		t.Fatalf("signatures in the store: %v, %v", sigs1, err)
	}
	if _, err := Push(t.Context(), st, img, repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}

	payloads, sigs := cosignSignatures(t, repo, img)
	if len(payloads) != 1 || verifiedBy(payloads, sigs, pub1, img) != 1 {
		t.Fatalf("cosign tag holds %d signatures, %d by key 1; want 1", len(payloads), verifiedBy(payloads, sigs, pub1, img))
	}
	// The store's signature manifest is in the registry unchanged, as a referrer of the image.
	subject, err := name.NewDigest(repo+"@"+img.Digest().String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Referrers(subject)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, d := range im.Manifests {
		found = found || d.Digest.String() == sigs1[0].Manifest.Digest.String() && d.ArtifactType == sign.ArtifactType
	}
	if !found {
		t.Errorf("referrers of %s = %+v, want the signature manifest %s", img.Digest(), im.Manifests, sigs1[0].Manifest.Digest)
	}

	// A second signature, by another key: the image is not uploaded again, and the tag then
	// holds both signatures.
	pub2 := signWith(t, st, img, 2)
	reg.take()
	if _, err := Push(t.Context(), st, img, repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	if n := count(reg.take(), "POST /v2/imgctl/node/blobs/uploads/"); n != 2 {
		t.Errorf("%d blob uploads for one new signature, want 2 (its payload, the signature tag's new config)", n)
	}
	payloads, sigs = cosignSignatures(t, repo, img)
	if len(payloads) != 2 || verifiedBy(payloads, sigs, pub1, img) != 1 || verifiedBy(payloads, sigs, pub2, img) != 1 {
		t.Errorf("cosign tag after the second signature holds %d signatures (key 1: %d, key 2: %d), want one by each",
			len(payloads), verifiedBy(payloads, sigs, pub1, img), verifiedBy(payloads, sigs, pub2, img))
	}

	// Nothing new: nothing written.
	if _, err := Push(t.Context(), st, img, repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	if w := writes(reg.take()); len(w) != 0 {
		t.Errorf("a repeated push wrote %q", w)
	}

	// A signature another tool added to the tag (here: a layer of the tag the store lacks)
	// survives the next push: another store's push with its own signature keeps both.
	other := storetest.Open(t)
	img2 := storetest.PutVersion(t, other, testVersion, 1795651200)
	if img2.Digest() != img.Digest() {
		t.Fatalf("the same version rendered twice differs: %s, %s", img2.Digest(), img.Digest())
	}
	pub3 := signWith(t, other, img2, 3)
	if _, err := Push(t.Context(), other, img2, repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	payloads, sigs = cosignSignatures(t, repo, img)
	if len(payloads) != 3 || verifiedBy(payloads, sigs, pub3, img) != 1 || verifiedBy(payloads, sigs, pub1, img) != 1 {
		t.Errorf("cosign tag after a push from another store holds %d signatures, want all 3", len(payloads))
	}
}
