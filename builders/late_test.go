package builders

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/assemble"
	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// layerBlob puts a tar of entries (name -> typeflag) into the cache as a layer of role r.
func layerBlob(t *testing.T, ca *cache.Cache, r spec.Role, entries ...string) assemble.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(e))}
		switch {
		case strings.HasSuffix(e, "/"):
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		case strings.HasSuffix(e, "@"):
			hdr.Name, hdr.Typeflag, hdr.Size, hdr.Linkname = strings.TrimSuffix(e, "@"), tar.TypeSymlink, 0, "kubelet"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e))
		}
	}
	tw.Close()
	d := digest.FromBytes(buf.Bytes())
	p := filepath.Join(ca.Dir(), "blobs", "sha256", d.Encoded())
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return assemble.Layer{Role: r, Digest: d, Size: int64(buf.Len())}
}

// The files stored last in the root squashfs: image.json and the regular files of the kubelet
// and bootstrap layers, by their canonical rootfs paths; not the other layers', not
// directories, symlinks or whiteouts.
func TestLateFilesAreVolatileLayers(t *testing.T) {
	ca, err := cache.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	layers := []assemble.Layer{
		layerBlob(t, ca, spec.RoleBase, "./", "./usr/", "./usr/bin/", "./usr/bin/sh", "./etc/", "./etc/os-release"),
		layerBlob(t, ca, spec.RoleKubelet, "./", "./usr/", "./usr/bin/", "./usr/bin/kubelet", "./usr/bin/kube@",
			"etc/systemd/system/kubelet.service", "./opt/cni/bin/.wh.old", "opt/cni/bin/bridge"),
		layerBlob(t, ca, spec.RoleBootstrap, "usr/lib/imgctl/bootstrap"),
		layerBlob(t, ca, spec.RoleExtra, "opt/site/tool"),
	}
	b := &Build{opts: Options{Env: &source.Env{Cache: ca}}, layers: layers}
	got, err := b.lateFilesLocked(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"etc/imgctl/image.json", "etc/systemd/system/kubelet.service", "opt/cni/bin/bridge", "usr/bin/kubelet", "usr/lib/imgctl/bootstrap"}
	if !slices.Equal(got, want) {
		t.Errorf("late files = %q, want %q", got, want)
	}
	if lateKey(got) == lateKey(got[:len(got)-1]) || lateKey([]string{"a", "bc"}) == lateKey([]string{"ab", "c"}) {
		t.Error("lateKey does not tell late sets apart")
	}

	// A volatile layer missing from the cache is an error naming it, not a silently other layout.
	os.Remove(filepath.Join(ca.Dir(), "blobs", "sha256", layers[2].Digest.Encoded()))
	b = &Build{opts: Options{Env: &source.Env{Cache: ca}}, layers: layers}
	if _, err := b.lateFilesLocked(context.Background()); err == nil || !strings.Contains(err.Error(), "bootstrap layer") {
		t.Errorf("err = %v, want one naming the bootstrap layer", err)
	}
}
