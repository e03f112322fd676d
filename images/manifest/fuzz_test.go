package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func addGolden(f *testing.F, name string) {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

// FuzzDecodeConfig: DecodeConfig accepts only valid configs (errors wrap ErrInvalid); what it
// accepts encodes canonically: EncodeConfig's output decodes back to the same config and
// re-encodes to the same bytes.
func FuzzDecodeConfig(f *testing.F) {
	addGolden(f, "config.json")
	enc, err := EncodeConfig(testConfig())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Add([]byte(`{"schemaVersion":1,"name":"a","version":"1","specDigest":"sha256:` +
		`0000000000000000000000000000000000000000000000000000000000000000","binaries":{},"layers":[]}`))
	f.Add([]byte(`{"schemaVersion":1,"name":"a","version":"1","rootfs":{"size":-1}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := DecodeConfig(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("DecodeConfig returned an invalid config: %v", err)
		}
		e1, err := EncodeConfig(cfg)
		if err != nil {
			t.Fatalf("EncodeConfig of a decoded config: %v", err)
		}
		c2, err := DecodeConfig(e1)
		if err != nil {
			t.Fatalf("DecodeConfig of EncodeConfig's output: %v\n%s", err, e1)
		}
		e2, err := EncodeConfig(c2)
		if err != nil || string(e1) != string(e2) {
			t.Fatalf("encoding is not canonical (%v):\n%s\n%s", err, e1, e2)
		}
		c3, _ := DecodeConfig(e2)
		if !reflect.DeepEqual(c2, c3) {
			t.Fatalf("decode of the canonical form is not stable:\n%+v\n%+v", c2, c3)
		}
		if ConfigDescriptor(e1).Digest != ConfigDescriptor(e2).Digest {
			t.Fatal("descriptor of equal bytes differs")
		}
	})
}

// FuzzDecodeManifest: DecodeManifest accepts only imgctl image manifests (errors wrap
// ErrInvalid); what it accepts re-encodes to a fixed point, and Artifacts inverts Build on it.
func FuzzDecodeManifest(f *testing.F) {
	addGolden(f, "manifest.json")
	r, err := Render(testConfig(), testArtifacts())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(r.ManifestJSON)
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"` +
		ConfigMediaType + `","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[{"digest":"x"}]}`))
	f.Add([]byte(`{"schemaVersion":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		e1, err := EncodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeManifest(e1)
		if err != nil {
			t.Fatalf("DecodeManifest of EncodeManifest's output: %v\n%s", err, e1)
		}
		e2, err := EncodeManifest(m2)
		if err != nil || string(e1) != string(e2) {
			t.Fatalf("encoding is not canonical (%v):\n%s\n%s", err, e1, e2)
		}
		arts := Artifacts(m2)
		if len(arts) != len(m2.Layers) {
			t.Fatalf("%d artifacts for %d layers", len(arts), len(m2.Layers))
		}
		if again := Artifacts(Build(testConfig(), m2.Config, arts)); !reflect.DeepEqual(arts, again) {
			t.Fatalf("Artifacts(Build(Artifacts(m))) changed the artifacts:\n%+v\n%+v", arts, again)
		}
	})
}
