package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/imgctl/imgctl/images/store/storetest"
	"github.com/imgctl/imgctl/layers/testenv"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestInteropGoContainerRegistry reads a signed store with go-containerregistry's layout
// package (what cosign's layout code uses) and checks the signature from what it returns.
func TestInteropGoContainerRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("interop test")
	}
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv, pub := testKey(1)
	desc := sign(t, st, img, priv)

	lp, err := layout.FromPath(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	ii, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index lists %d manifests, want the image and its signature", len(im.Manifests))
	}
	var found bool
	for _, d := range im.Manifests {
		if d.Digest.String() != desc.Digest.String() {
			continue
		}
		found = true
		if d.ArtifactType != ArtifactType || string(d.MediaType) != ocispec.MediaTypeImageManifest {
			t.Errorf("signature index entry = %+v", d)
		}
	}
	if !found {
		t.Fatalf("signature %s not in the index", desc.Digest)
	}

	gi, err := lp.Image(toHash(t, desc.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := gi.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != ArtifactType || m.Subject == nil || m.Subject.Digest.String() != img.Digest().String() {
		t.Fatalf("signature manifest = %+v", m)
	}
	if len(m.Layers) != 1 || string(m.Layers[0].MediaType) != PayloadMediaType {
		t.Fatalf("layers = %+v", m.Layers)
	}
	layer, err := gi.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Compressed() // cosign reads the payload this way
	if err != nil {
		t.Fatal(err)
	}
	payload, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(payload, []byte(`"docker-manifest-digest":"`+img.Digest().String()+`"`)) {
		t.Errorf("payload = %s", payload)
	}
	sig, err := base64.StdEncoding.DecodeString(m.Layers[0].Annotations[SignatureAnnotation])
	if err != nil || !ed25519.Verify(pub, payload, sig) {
		t.Errorf("signature read through go-containerregistry does not verify: %v", err)
	}
	// The image itself still reads.
	if _, err := lp.Image(toHash(t, img.Digest().String())); err != nil {
		t.Errorf("image: %v", err)
	}
}

// TestInteropSkopeo checks that skopeo still finds the signed image by version: the
// signature entry in index.json has no ref.name to confuse it.
func TestInteropSkopeo(t *testing.T) {
	if testing.Short() {
		t.Skip("interop test")
	}
	testenv.Tools(t, "skopeo")
	skopeo, _ := exec.LookPath("skopeo")
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv, _ := testKey(1)
	sign(t, st, img, priv)
	raw := readBlob(t, st, img.Digest())

	ref := "oci:" + st.Dir() + ":" + img.Config.Version
	out, err := exec.CommandContext(t.Context(), skopeo, "inspect", "--raw", ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw %s: %v", ref, runErr(err))
	}
	if !bytes.Equal(bytes.TrimSpace(out), raw) {
		t.Errorf("skopeo returned\n%s\nwant\n%s", out, raw)
	}
	// Copying the image out of the store works too (skopeo reads every blob it names).
	dst := "oci:" + t.TempDir() + ":copy"
	if out, err := exec.CommandContext(t.Context(), skopeo, "copy", "--quiet", ref, dst).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v: %s", err, out)
	}
}

func toHash(t *testing.T, s string) v1.Hash {
	t.Helper()
	h, err := v1.NewHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// runErr adds a failed command's stderr to its error.
func runErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%w: %s", err, ee.Stderr)
	}
	return err
}
