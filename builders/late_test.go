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

// layerBlob puts a tar of entries into the cache as a layer of role r: "dir/", "name@" (a
// symlink to kubelet), "name->target" (a symlink), else a regular file holding its name.
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
		case strings.Contains(e, "->"):
			name, target, _ := strings.Cut(e, "->")
			hdr.Name, hdr.Typeflag, hdr.Size, hdr.Linkname = name, tar.TypeSymlink, 0, target
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

// The files stored last in the root squashfs, in groups by their canonical rootfs paths
// (resolved through the lower layers' symlinked directories, as composing places them): 1 the
// kernel layer's regular files, 2 the runtime layer's, 3 the extra layers', 4 the regular files
// of the kubelet and bootstrap layers, 5 image.json (every build changes it, and a change of its
// size must move nothing after it: the kubelet sorts after etc/); not the base layer's, not directories,
// symlinks or whiteouts, not a kernel file a later layer replaces.
func TestLateFilesAreKernelAndVolatileLayers(t *testing.T) {
	ca, err := cache.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	layers := []assemble.Layer{
		layerBlob(t, ca, spec.RoleBase, "./", "./usr/", "./usr/bin/", "./usr/lib/", "./bin->usr/bin", "./lib->usr/lib", "./usr/bin/sh",
			"./etc/", "./etc/os-release"),
		layerBlob(t, ca, spec.RoleKernel, "./", "./boot/", "./boot/vmlinuz-6.1", "./lib/", "./lib/modules/", "./lib/modules/6.1/",
			"./lib/modules/6.1/a.ko", "./lib/modules/6.1/modules.dep", "./lib/modules/6.1/build->/usr/src/x"),
		layerBlob(t, ca, spec.RoleRuntime, "usr/bin/containerd"),
		layerBlob(t, ca, spec.RoleKubelet, "./", "./usr/", "./usr/bin/", "./usr/bin/kubelet", "./usr/bin/kube@", "./bin/kubectl",
			"etc/systemd/system/kubelet.service", "./opt/cni/bin/.wh.old", "opt/cni/bin/bridge"),
		layerBlob(t, ca, spec.RoleBootstrap, "usr/lib/imgctl/bootstrap", "lib/modules/6.1/modules.dep"),
		layerBlob(t, ca, spec.RoleExtra, "opt/site/tool"),
	}
	b := &Build{opts: Options{Env: &source.Env{Cache: ca}}, layers: layers}
	got, err := b.lateFilesLocked(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []lateFile{
		{"boot/vmlinuz-6.1", 1},
		{"etc/imgctl/image.json", 5},
		{"etc/systemd/system/kubelet.service", 4},
		{"opt/cni/bin/bridge", 4},
		{"opt/site/tool", 3},
		{"usr/bin/containerd", 2},
		{"usr/bin/kubectl", 4},
		{"usr/bin/kubelet", 4},
		{"usr/lib/imgctl/bootstrap", 4},
		{"usr/lib/modules/6.1/a.ko", 1},
		{"usr/lib/modules/6.1/modules.dep", 4}, // the bootstrap layer's replaces the kernel's
	}
	if !slices.Equal(got, want) {
		t.Errorf("late files =\n%v\nwant\n%v", got, want)
	}
	for _, w := range want {
		if g := lateGroupOf(got, w.path); g != w.group {
			t.Errorf("lateGroupOf(%q) = %d, want %d", w.path, g, w.group)
		}
	}
	if g := lateGroupOf(got, "usr/bin/sh"); g != 0 {
		t.Errorf("lateGroupOf(usr/bin/sh) = %d, want 0", g)
	}
	// The cache key tells layer sets apart by role and content, without listing files.
	other := slices.Clone(layers)
	other[1].Role, other[5].Role = spec.RoleExtra, spec.RoleKernel
	if lateKey(layers) == lateKey(layers[:5]) || lateKey(layers) == lateKey(other) || lateKey(layers) != lateKey(slices.Clone(layers)) {
		t.Error("lateKey does not tell layer sets apart")
	}

	// A layer missing from the cache is an error naming it, not a silently other layout.
	os.Remove(filepath.Join(ca.Dir(), "blobs", "sha256", layers[4].Digest.Encoded()))
	b = &Build{opts: Options{Env: &source.Env{Cache: ca}}, layers: layers}
	if _, err := b.lateFilesLocked(context.Background()); err == nil || !strings.Contains(err.Error(), "layer bootstrap") {
		t.Errorf("err = %v, want one naming the bootstrap layer", err)
	}
}
