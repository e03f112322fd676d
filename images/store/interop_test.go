package store

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/layers/testenv"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// interopStore holds one image with two artifacts and returns it with its raw manifest.
func interopStore(t *testing.T) (*Store, Image, []byte) {
	t.Helper()
	s := newStore(t)
	rootfs := putArtifact(t, s, "rootfs.tar", manifest.RootfsMediaType, []byte("a rootfs tar"))
	kernel := putArtifact(t, s, "vmlinuz", manifest.KernelMediaType, []byte("a kernel"))
	desc, err := s.PutImage(t.Context(), testConfig("1.21.13-6.1.0-56-20261126", 1795651200), []manifest.Artifact{rootfs, kernel})
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve(t.Context(), desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.readBlob(t.Context(), desc.Digest, desc.Size, maxMetaBlob)
	if err != nil {
		t.Fatal(err)
	}
	return s, img, raw
}

func TestInteropGoContainerRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("interop test")
	}
	s, img, raw := interopStore(t)
	lp, err := layout.FromPath(s.Dir())
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
	if len(im.Manifests) != 1 {
		t.Fatalf("index lists %d manifests", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.Digest.String() != img.Digest().String() || d.ArtifactType != manifest.ArtifactType ||
		d.Annotations[ocispec.AnnotationRefName] != img.Config.Version {
		t.Errorf("index entry = %+v", d)
	}
	gi, err := lp.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	gotRaw, err := gi.RawManifest()
	if err != nil || !bytes.Equal(gotRaw, raw) {
		t.Fatalf("RawManifest = %s, %v", gotRaw, err)
	}
	gm, err := gi.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if gm.ArtifactType != manifest.ArtifactType || string(gm.Config.MediaType) != manifest.ConfigMediaType {
		t.Errorf("manifest = %+v", gm)
	}
	rawCfg, err := gi.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := manifest.DecodeConfig(rawCfg); err != nil || cfg.Version != img.Config.Version {
		t.Errorf("config = %+v, %v", cfg, err)
	}
	for _, l := range gm.Layers {
		layer, err := gi.LayerByDigest(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := layer.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || int64(len(data)) != l.Size {
			t.Errorf("layer %s: %d bytes, %v", l.Annotations[ocispec.AnnotationTitle], len(data), err)
		}
	}
}

func TestInteropSkopeo(t *testing.T) {
	if testing.Short() {
		t.Skip("interop test")
	}
	testenv.Tools(t, "skopeo")
	skopeo, _ := exec.LookPath("skopeo")
	s, img, raw := interopStore(t)
	ref := "oci:" + s.Dir() + ":" + img.Config.Version
	out, err := exec.CommandContext(t.Context(), skopeo, "inspect", "--raw", ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw %s: %v", ref, runErr(err))
	}
	if !bytes.Equal(bytes.TrimSpace(out), raw) {
		t.Errorf("skopeo returned\n%s\nwant\n%s", out, raw)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(out, &m); err != nil || m.ArtifactType != manifest.ArtifactType {
		t.Errorf("artifactType = %q, %v", m.ArtifactType, err)
	}
	// The config too, by the same reference.
	out, err = exec.CommandContext(t.Context(), skopeo, "inspect", "--raw", "--config", ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --config: %v", runErr(err))
	}
	if cfg, err := manifest.DecodeConfig(bytes.TrimSpace(out)); err != nil || cfg.SpecDigest != img.Config.SpecDigest {
		t.Errorf("skopeo config = %s (%v)", out, err)
	}
}

func runErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok {
		return &stderrError{err, ee.Stderr}
	}
	return err
}

type stderrError struct {
	err    error
	stderr []byte
}

func (e *stderrError) Error() string { return e.err.Error() + ": " + string(e.stderr) }
