package sign

// Tests of store.PutReferrer and store.Referrers (images/store/referrers.go), kept here
// because this package is their user.

import (
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestStoreReferrers(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	other := storetest.PutVersion(t, st, "1.1.0", 20)
	priv, _ := testKey(1)
	desc := sign(t, st, img, priv)
	m := readManifest(t, st, desc.Digest)

	// A referrer of another artifact type, with a ref.name the index entry must not carry.
	sbom := m
	sbom.ArtifactType = "application/spdx+json"
	sbom.Annotations = map[string]string{ocispec.AnnotationRefName: "1.0.0-sbom", "x": "y"}
	data, _ := manifest.EncodeManifest(sbom)
	sbomDesc, err := st.PutReferrer(t.Context(), data)
	if err != nil {
		t.Fatal(err)
	}
	if sbomDesc.ArtifactType != "application/spdx+json" || sbomDesc.Annotations["x"] != "y" || sbomDesc.Annotations[ocispec.AnnotationRefName] != "" {
		t.Errorf("sbom entry = %+v", sbomDesc)
	}
	// Putting it again changes nothing.
	if again, err := st.PutReferrer(t.Context(), data); err != nil || again.Digest != sbomDesc.Digest {
		t.Errorf("second PutReferrer = %v, %v", again, err)
	}

	all, err := st.Referrers(t.Context(), img.Digest(), "")
	if err != nil || len(all) != 2 || all[0].Descriptor.Digest != desc.Digest || all[1].Descriptor.Digest != sbomDesc.Digest {
		t.Fatalf("Referrers(all) = %+v, %v", all, err)
	}
	sigs, err := st.Referrers(t.Context(), img.Digest(), ArtifactType)
	if err != nil || len(sigs) != 1 || sigs[0].Manifest.Subject.Digest != img.Digest() {
		t.Fatalf("Referrers(sig) = %+v, %v", sigs, err)
	}
	if none, err := st.Referrers(t.Context(), other.Digest(), ""); err != nil || len(none) != 0 {
		t.Errorf("Referrers(other) = %+v, %v", none, err)
	}
	if imgs, err := st.List(t.Context()); err != nil || len(imgs) != 2 {
		t.Errorf("List = %d images, %v", len(imgs), err)
	}
	storeClean(t, st)
}

func TestStorePutReferrerRejects(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	priv, _ := testKey(1)
	good := readManifest(t, st, sign(t, st, img, priv).Digest)
	elsewhere := storetest.PutVersion(t, storetest.Open(t), "2.0.0", 30)

	cases := []struct {
		name   string
		edit   func(m *ocispec.Manifest)
		want   string
		target error
	}{
		{"no subject", func(m *ocispec.Manifest) { m.Subject = nil }, "no subject", nil},
		{"not a manifest", func(m *ocispec.Manifest) { m.MediaType = ocispec.MediaTypeImageIndex }, "not an OCI image manifest", nil},
		{"subject not in the store", func(m *ocispec.Manifest) {
			m.Subject = &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: elsewhere.Digest(), Size: elsewhere.Descriptor.Size}
		}, "not in the store", store.ErrNotFound},
		{"layer missing", func(m *ocispec.Manifest) {
			m.Layers[0].Digest = digest.FromString("absent")
		}, "not found", store.ErrNotFound},
		{"layer size wrong", func(m *ocispec.Manifest) { m.Layers[0].Size++ }, "layers[0]", store.ErrDigestMismatch},
		{"subject size wrong", func(m *ocispec.Manifest) { m.Subject.Size++ }, "subject", store.ErrDigestMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := good
			subj := *good.Subject
			m.Subject = &subj
			m.Layers = append([]ocispec.Descriptor(nil), good.Layers...)
			m.Annotations = map[string]string{"case": c.name} // a new digest each time
			c.edit(&m)
			data, _ := manifest.EncodeManifest(m)
			desc, err := st.PutReferrer(t.Context(), data)
			if err == nil {
				t.Fatalf("stored %+v", desc)
			}
			if !strings.Contains(err.Error(), c.want) || (c.target != nil && !errors.Is(err, c.target)) {
				t.Errorf("error %v: want %q / %v", err, c.want, c.target)
			}
		})
	}
	if all, err := st.Referrers(t.Context(), img.Digest(), ""); err != nil || len(all) != 1 {
		t.Errorf("rejected referrers were listed: %d, %v", len(all), err)
	}
}
