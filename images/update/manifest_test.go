package update

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

var (
	rootDigest   = digestOf([]byte("root"))
	kernelDigest = digestOf([]byte("kernel"))
	initrdDigest = digestOf([]byte("initrd"))
	rootHash     = strings.Repeat("ab", 32)
)

// testManifest is an imgctl image manifest as images/manifest writes it; edit changes it
// before encoding.
func testManifest(t *testing.T, edit func(m map[string]any)) ([]byte, string) {
	t.Helper()
	data, err := manifestJSON(edit)
	if err != nil {
		t.Fatal(err)
	}
	return data, digestOf(data)
}

func manifestJSON(edit func(m map[string]any)) ([]byte, error) {
	layer := func(title, mt, d string, size int64, ann map[string]string) map[string]any {
		a := map[string]any{AnnotationTitle: title}
		for k, v := range ann {
			a[k] = v
		}
		return map[string]any{"mediaType": mt, "digest": d, "size": size, "annotations": a}
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     OCIManifestMediaType,
		"artifactType":  ArtifactType,
		"config":        map[string]any{"mediaType": "application/vnd.imgctl.image.config.v1+json", "digest": digestOf([]byte("config")), "size": 6},
		"layers": []any{
			layer("disk.simg", "application/vnd.imgctl.disk.v1.raw+sparse", digestOf([]byte("disk")), 4, nil),
			layer(KernelArtifact, "application/vnd.imgctl.kernel.v1", kernelDigest, 6, nil),
			layer(InitrdArtifact, "application/vnd.imgctl.initrd.v1", initrdDigest, 6, nil),
			layer(RootArtifact, "application/vnd.imgctl.rootfs.v1.squashfs", rootDigest, 3*4096+8192, map[string]string{
				AnnotationKernelCmdline:  "console=ttyS0,115200n8 quiet",
				AnnotationRootDigest:     rootDigest,
				AnnotationRootSize:       "20480",
				AnnotationVerityRootHash: rootHash,
				AnnotationVerityOffset:   "12288",
			}),
		},
		"annotations": map[string]any{
			AnnotationVersion:           "1.21.13-6.1.0-20261205",
			AnnotationKubernetesVersion: "1.21.13",
			AnnotationArchitecture:      "amd64",
		},
	}
	if edit != nil {
		edit(m)
	}
	return json.Marshal(m)
}

func rootAnnotations(m map[string]any) map[string]any {
	layers := m["layers"].([]any)
	return layers[len(layers)-1].(map[string]any)["annotations"].(map[string]any)
}

func TestParseManifest(t *testing.T) {
	data, d := testManifest(t, nil)
	im, err := ParseManifest(data, d)
	if err != nil {
		t.Fatal(err)
	}
	want := Image{
		Digest: d, Version: "1.21.13-6.1.0-20261205", Kubernetes: "1.21.13", Architecture: "amd64",
		Root: Blob{rootDigest, 20480}, Kernel: Blob{kernelDigest, 6}, Initrd: Blob{initrdDigest, 6},
		VerityRootHash: rootHash, VerityOffset: 12288, Cmdline: []string{"console=ttyS0,115200n8", "quiet"},
	}
	if !reflect.DeepEqual(im, want) {
		t.Errorf("ParseManifest:\n got %+v\nwant %+v", im, want)
	}
	if im.DataBlocks() != 3 {
		t.Errorf("DataBlocks = %d, want 3", im.DataBlocks())
	}
}

func TestParseManifestRefuses(t *testing.T) {
	good, goodDigest := testManifest(t, nil)
	for _, c := range []struct {
		name string
		edit func(m map[string]any)
		want string
	}{
		{"schema", func(m map[string]any) { m["schemaVersion"] = 1 }, "schemaVersion 1, want 2"},
		{"media type", func(m map[string]any) { m["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json" }, "mediaType"},
		{"artifact type", func(m map[string]any) { delete(m, "artifactType") }, "not an imgctl image"},
		{"no architecture", func(m map[string]any) { delete(m["annotations"].(map[string]any), AnnotationArchitecture) }, "annotation dev.imgctl.architecture"},
		{"no version", func(m map[string]any) { delete(m["annotations"].(map[string]any), AnnotationVersion) }, "annotation org.opencontainers.image.version"},
		{"no kubernetes", func(m map[string]any) { delete(m["annotations"].(map[string]any), AnnotationKubernetesVersion) }, "dev.imgctl.kubernetes.version"},
		{"no root", func(m map[string]any) { m["layers"] = m["layers"].([]any)[:3] }, `no layer titled "rootfs.squashfs"`},
		{"no kernel", func(m map[string]any) {
			l := m["layers"].([]any)
			m["layers"] = []any{l[0], l[2], l[3]}
		}, `no layer titled "vmlinuz"`},
		{"two roots", func(m map[string]any) { m["layers"] = append(m["layers"].([]any), m["layers"].([]any)[3]) }, `a second layer titled "rootfs.squashfs"`},
		{"bad layer digest", func(m map[string]any) { m["layers"].([]any)[1].(map[string]any)["digest"] = "sha256:beef" }, `layer "vmlinuz": digest`},
		{"empty initrd", func(m map[string]any) { m["layers"].([]any)[2].(map[string]any)["size"] = 0 }, `layer "initrd.img": size 0`},
		{"root digest differs", func(m map[string]any) { rootAnnotations(m)[AnnotationRootDigest] = kernelDigest }, "dev.imgctl.root.digest"},
		{"root size differs", func(m map[string]any) { rootAnnotations(m)[AnnotationRootSize] = "1" }, "dev.imgctl.root.size"},
		{"no verity", func(m map[string]any) { delete(rootAnnotations(m), AnnotationVerityRootHash) }, "dev.imgctl.root.verity.roothash: verity root hash \"\": want 64 lower-case hex digits"},
		{"verity upper case", func(m map[string]any) { rootAnnotations(m)[AnnotationVerityRootHash] = strings.ToUpper(rootHash) }, "dev.imgctl.root.verity.roothash"},
		{"no offset", func(m map[string]any) { delete(rootAnnotations(m), AnnotationVerityOffset) }, "dev.imgctl.root.verity.offset: missing"},
		{"offset not a number", func(m map[string]any) { rootAnnotations(m)[AnnotationVerityOffset] = "12k" }, `"12k" is not a number`},
		{"offset unaligned", func(m map[string]any) { rootAnnotations(m)[AnnotationVerityOffset] = "12000" }, "want a positive multiple of 4096"},
		{"offset past the root", func(m map[string]any) { rootAnnotations(m)[AnnotationVerityOffset] = "20480" }, "not inside the 20480-byte root"},
	} {
		t.Run(c.name, func(t *testing.T) {
			data, d := testManifest(t, c.edit)
			im, err := ParseManifest(data, d)
			if err == nil {
				t.Fatalf("accepted: %+v", im)
			}
			if !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q: want it to contain %q and wrap ErrInvalid", err, c.want)
			}
		})
	}
	// The digest is checked before anything is read.
	other := digestOf([]byte("other"))
	if _, err := ParseManifest(good, other); err == nil || !strings.Contains(err.Error(), "manifest "+other+": its bytes hash to "+goodDigest) {
		t.Errorf("wrong digest: %v", err)
	}
	if _, err := ParseManifest(good, "sha256:abc"); err == nil || !strings.Contains(err.Error(), "is not a digest") {
		t.Errorf("bad digest: %v", err)
	}
	garbage := []byte("{not json")
	if _, err := ParseManifest(garbage, digestOf(garbage)); err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("garbage: %v", err)
	}
}
