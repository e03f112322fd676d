package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	nodeupdate "github.com/imgctl/imgctl/images/update"
)

var update = flag.Bool("update", false, "rewrite golden files")

func testConfig() Config {
	return Config{
		SchemaVersion:   SchemaVersion,
		Name:            "node",
		Version:         "1.21.13-6.1.0-56-20261126",
		SpecDigest:      digest.FromString("spec"),
		Kubernetes:      "1.21.13",
		Kernel:          "6.1.0-56-cloud-amd64",
		Bootstrap:       "0.3.0",
		Imgctl:          "v0.1.0",
		SourceDateEpoch: 1795651200,
		Layers: []Layer{
			{Role: "base", Version: "bookworm-20261126", Digest: digest.FromString("base"), Size: 232 << 20,
				Sources: []Source{{URI: "mmdebstrap://bookworm", Digest: digest.FromString("base-in")}}},
			{Role: "runtime", Version: "1.6.20", Digest: digest.FromString("runtime"), Size: 90 << 20,
				Sources: []Source{
					{URI: "https://deb.example/containerd.deb", Digest: digest.FromString("c"), Resolved: "containerd=1.6.20~ds1-1+b1"},
					{URI: "https://deb.example/runc.deb", Digest: digest.FromString("r"), Resolved: "runc=1.1.5+ds1-1+b1"},
				}},
		},
		Rootfs: Rootfs{Digest: digest.FromString("rootfs"), Size: 388 << 20, Entries: 21034},
	}
}

func testArtifacts() []Artifact {
	return []Artifact{
		{Name: "rootfs.tar", MediaType: RootfsMediaType, Digest: digest.FromString("rootfs"), Size: 388 << 20},
		{Name: "vmlinuz", MediaType: KernelMediaType, Digest: digest.FromString("k"), Size: 7 << 20,
			Annotations: map[string]string{"dev.imgctl.cmdline": "console=ttyS0 <quiet> & more"}},
		{Name: "disk.raw", MediaType: DiskRawMediaType, Digest: digest.FromString("d"), Size: 2 << 30},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no kernel", func(c *Config) { c.Kernel = "" }, ""},
		{"flavor", func(c *Config) { c.Flavor = "metal" }, ""},
		{"upper flavor", func(c *Config) { c.Flavor = "Metal" }, `flavor "Metal"`},
		{"flavor with dot", func(c *Config) { c.Flavor = "a.b" }, `flavor "a.b"`},
		{"no layers", func(c *Config) { c.Layers = nil }, ""},
		{"schema 0", func(c *Config) { c.SchemaVersion = 0 }, "schemaVersion 0"},
		{"schema 2", func(c *Config) { c.SchemaVersion = 2 }, "schemaVersion 2"},
		{"empty name", func(c *Config) { c.Name = "" }, "name"},
		{"upper name", func(c *Config) { c.Name = "Node" }, "name"},
		{"empty version", func(c *Config) { c.Version = "" }, "version"},
		{"version with colon", func(c *Config) { c.Version = "1.21:x" }, "version"},
		{"version with slash", func(c *Config) { c.Version = "a/b" }, "version"},
		{"version leading dot", func(c *Config) { c.Version = ".1" }, "version"},
		{"missing spec digest", func(c *Config) { c.SpecDigest = "" }, "specDigest"},
		{"bad spec digest", func(c *Config) { c.SpecDigest = "sha256:xyz" }, "specDigest"},
		{"negative epoch", func(c *Config) { c.SourceDateEpoch = -1 }, "sourceDateEpoch"},
		{"layer without role", func(c *Config) { c.Layers[0].Role = "" }, "empty role"},
		{"layer bad digest", func(c *Config) { c.Layers[1].Digest = "md5:abc" }, "layers[1] (runtime): digest"},
		{"layer negative size", func(c *Config) { c.Layers[0].Size = -1 }, "negative size"},
		{"source without uri", func(c *Config) { c.Layers[1].Sources[0].URI = "" }, "sources[0]: empty uri"},
		{"source bad digest", func(c *Config) { c.Layers[1].Sources[1].Digest = "sha256:12" }, "sources[1]: digest"},
		{"rootfs bad digest", func(c *Config) { c.Rootfs.Digest = "sha256:" }, "rootfs digest"},
		{"rootfs negative", func(c *Config) { c.Rootfs.Entries = -3 }, "rootfs: negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig()
			tt.modify(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestValidateArtifacts(t *testing.T) {
	good := testArtifacts()[0]
	tests := []struct {
		name string
		arts func() []Artifact
		want string
	}{
		{"valid", testArtifacts, ""},
		{"none", func() []Artifact { return nil }, ""},
		{"empty name", func() []Artifact { a := good; a.Name = ""; return []Artifact{a} }, "name"},
		{"path name", func() []Artifact { a := good; a.Name = "../x"; return []Artifact{a} }, "plain file name"},
		{"dotdot", func() []Artifact { a := good; a.Name = ".."; return []Artifact{a} }, "plain file name"},
		{"no media type", func() []Artifact { a := good; a.MediaType = ""; return []Artifact{a} }, "media type"},
		{"negative size", func() []Artifact { a := good; a.Size = -1; return []Artifact{a} }, "negative size"},
		{"bad digest", func() []Artifact { a := good; a.Digest = "sha256:nothex"; return []Artifact{a} }, "digest"},
		{"duplicate", func() []Artifact { return []Artifact{good, good} }, "duplicate artifact name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateArtifacts(tt.arts())
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	cfg := testConfig()
	r, err := Render(cfg, testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	m := r.Manifest
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != ArtifactType {
		t.Errorf("header = %d %q %q", m.SchemaVersion, m.MediaType, m.ArtifactType)
	}
	if m.Config.MediaType != ConfigMediaType || m.Config.Digest != digest.FromBytes(r.ConfigJSON) ||
		m.Config.Size != int64(len(r.ConfigJSON)) {
		t.Errorf("config descriptor = %+v", m.Config)
	}
	wantAnn := map[string]string{
		"org.opencontainers.image.version": cfg.Version,
		"org.opencontainers.image.created": "2026-11-26T00:00:00Z",
		"dev.imgctl.kubernetes.version":    "1.21.13",
		"dev.imgctl.kernel.version":        "6.1.0-56-cloud-amd64",
		"dev.imgctl.name":                  "node",
	}
	if !reflect.DeepEqual(m.Annotations, wantAnn) {
		t.Errorf("annotations = %v, want %v", m.Annotations, wantAnn)
	}
	if len(m.Layers) != 3 {
		t.Fatalf("%d layers", len(m.Layers))
	}
	for i, a := range testArtifacts() {
		l := m.Layers[i]
		if l.MediaType != a.MediaType || l.Digest != a.Digest || l.Size != a.Size || l.Annotations[ocispec.AnnotationTitle] != a.Name {
			t.Errorf("layer %d = %+v, want %+v", i, l, a)
		}
	}
	if got := Artifacts(m); !reflect.DeepEqual(got, testArtifacts()) {
		t.Errorf("Artifacts(Build(...)) = %+v", got)
	}
	if r.ManifestDescriptor.Digest != digest.FromBytes(r.ManifestJSON) || r.ManifestDescriptor.ArtifactType != ArtifactType {
		t.Errorf("manifest descriptor = %+v", r.ManifestDescriptor)
	}

	// No kernel: no kernel annotation rather than an empty one.
	cfg.Kernel = ""
	r2, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r2.Manifest.Annotations[AnnotationKernelVersion]; ok {
		t.Error("kernel annotation present without a kernel")
	}
	if r2.Manifest.Layers == nil || !bytes.Contains(r2.ManifestJSON, []byte(`"layers":[]`)) {
		t.Errorf("no artifacts must encode as an empty layers array: %s", r2.ManifestJSON)
	}
}

func TestRenderDeterministic(t *testing.T) {
	first, err := Render(testConfig(), testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		arts := testArtifacts()
		// Fresh maps each time: map iteration order must not leak into the bytes.
		arts[2].Annotations = map[string]string{"z": "1", "a": "2", "m": "3", "b": "4"}
		arts0 := testArtifacts()
		arts0[2].Annotations = map[string]string{"b": "4", "m": "3", "a": "2", "z": "1"}
		r1, err1 := Render(testConfig(), arts)
		r2, err2 := Render(testConfig(), arts0)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !bytes.Equal(r1.ManifestJSON, r2.ManifestJSON) || !bytes.Equal(r1.ConfigJSON, first.ConfigJSON) {
			t.Fatal("same input gave different bytes")
		}
	}
	again, _ := Render(testConfig(), testArtifacts())
	if !bytes.Equal(first.ManifestJSON, again.ManifestJSON) {
		t.Fatal("manifest not deterministic")
	}
	// Not HTML-escaped: other OCI tools write '<' and '&' as is.
	if !bytes.Contains(first.ManifestJSON, []byte("<quiet> & more")) {
		t.Errorf("annotation escaped: %s", first.ManifestJSON)
	}
}

func TestGolden(t *testing.T) {
	r, err := Render(testConfig(), testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"config.json": r.ConfigJSON, "manifest.json": r.ManifestJSON} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from golden:\ngot  %s\nwant %s", name, got, want)
		}
	}
}

func TestDecode(t *testing.T) {
	r, err := Render(testConfig(), testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := DecodeConfig(r.ConfigJSON)
	if err != nil || !reflect.DeepEqual(cfg, testConfig()) {
		t.Fatalf("DecodeConfig = %+v, %v", cfg, err)
	}
	m, err := DecodeManifest(r.ManifestJSON)
	if err != nil || !reflect.DeepEqual(m, r.Manifest) {
		t.Fatalf("DecodeManifest = %+v, %v", m, err)
	}
	// Unknown fields from a newer writer are ignored.
	var raw map[string]any
	_ = json.Unmarshal(r.ConfigJSON, &raw)
	raw["future"] = true
	data, _ := json.Marshal(raw)
	if _, err := DecodeConfig(data); err != nil {
		t.Errorf("unknown field rejected: %v", err)
	}

	bad := []struct {
		name string
		data string
		fn   func([]byte) error
	}{
		{"config not json", `{`, func(b []byte) error { _, err := DecodeConfig(b); return err }},
		{"config invalid", `{"schemaVersion":1}`, func(b []byte) error { _, err := DecodeConfig(b); return err }},
		{"manifest not json", `[`, func(b []byte) error { _, err := DecodeManifest(b); return err }},
		{"manifest schema 1", `{"schemaVersion":1}`, func(b []byte) error { _, err := DecodeManifest(b); return err }},
		{"foreign config", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}`,
			func(b []byte) error { _, err := DecodeManifest(b); return err }},
	}
	for _, tt := range bad {
		if err := tt.fn([]byte(tt.data)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", tt.name, err)
		}
	}
}

func TestFlavorRoundTrip(t *testing.T) {
	cfg := testConfig()
	cfg.Flavor = "metal"
	r, err := Render(cfg, testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(r.ConfigJSON, []byte(`"kubernetes":"1.21.13","flavor":"metal"`)) {
		t.Errorf("config without the flavor: %s", r.ConfigJSON)
	}
	got, err := DecodeConfig(r.ConfigJSON)
	if err != nil || got.Flavor != "metal" || !reflect.DeepEqual(got, cfg) {
		t.Fatalf("DecodeConfig = %+v, %v", got, err)
	}
	// Without a flavor the config has no flavor key (images built before flavors keep their bytes).
	plain, err := Render(testConfig(), testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plain.ConfigJSON, []byte("flavor")) {
		t.Errorf("config of a spec without flavor: %s", plain.ConfigJSON)
	}
}

func TestCheckVersion(t *testing.T) {
	for _, v := range []string{"1.21.13-6.1.0-20261126.1", "v1", "a+b_c"} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%q) = %v", v, err)
		}
	}
	for _, v := range []string{"", "-x", "a:b", "a/b", strings.Repeat("a", 129), "sha256:0"} {
		if err := CheckVersion(v); err == nil || !strings.Contains(err.Error(), "want [A-Za-z0-9]") {
			t.Errorf("CheckVersion(%q) = %v, want an error", v, err)
		}
	}
}

// TestArchitecture: the config's architecture is the manifest's dev.imgctl.architecture (the
// node refuses an image for another one), and absent without one (older images keep their bytes).
func TestArchitecture(t *testing.T) {
	cfg := testConfig()
	cfg.Architecture = "amd64"
	r, err := Render(cfg, testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Manifest.Annotations["dev.imgctl.architecture"]; got != "amd64" {
		t.Errorf("architecture annotation = %q", got)
	}
	if !bytes.Contains(r.ConfigJSON, []byte(`"architecture":"amd64"`)) {
		t.Errorf("config without the architecture: %s", r.ConfigJSON)
	}
	if got, err := DecodeConfig(r.ConfigJSON); err != nil || !reflect.DeepEqual(got, cfg) {
		t.Errorf("DecodeConfig = %+v, %v", got, err)
	}
	plain, err := Render(testConfig(), testArtifacts())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plain.Manifest.Annotations[AnnotationArchitecture]; ok || bytes.Contains(plain.ConfigJSON, []byte("architecture")) {
		t.Errorf("an image without an architecture has one: %v %s", plain.Manifest.Annotations, plain.ConfigJSON)
	}
	cfg.Architecture = "x86 64"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `architecture "x86 64": want GOARCH's name`) {
		t.Errorf("Validate = %v", err)
	}
}

// TestUpdateKeysAreOCIs: the node's leaf (images/update, which this package re-exports) spells
// OCI's names as the OCI module does.
func TestUpdateKeysAreOCIs(t *testing.T) {
	if nodeupdate.AnnotationTitle != ocispec.AnnotationTitle || nodeupdate.AnnotationVersion != ocispec.AnnotationVersion || nodeupdate.OCIManifestMediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("images/update: %q, %q, %q; OCI: %q, %q, %q", nodeupdate.AnnotationTitle, nodeupdate.AnnotationVersion, nodeupdate.OCIManifestMediaType,
			ocispec.AnnotationTitle, ocispec.AnnotationVersion, ocispec.MediaTypeImageManifest)
	}
}
