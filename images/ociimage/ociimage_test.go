package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/testenv"
)

const testName = "registry.imgctl.invalid/kubernetes/kube-proxy:v1.21.13"

// hostTree writes a small tree: a root-file-system-like directory with a symlink, a setuid file
// and an empty directory, plus a binary outside it.
func hostTree(t *testing.T) (rootfs, binary string) {
	t.Helper()
	d := t.TempDir()
	rootfs = filepath.Join(d, "rootfs")
	for _, p := range []string{"usr/sbin", "usr/lib/x86_64-linux-gnu", "var/empty"} {
		if err := os.MkdirAll(filepath.Join(rootfs, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, data string, mode fs.FileMode) {
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask
			t.Fatal(err)
		}
	}
	write(filepath.Join(rootfs, "usr/sbin/xtables-nft-multi"), "multi", 0o755)
	write(filepath.Join(rootfs, "usr/lib/x86_64-linux-gnu/libx.so.1"), "lib", 0o644)
	write(filepath.Join(rootfs, "usr/sbin/su"), "su", 0o755|fs.ModeSetuid)
	if err := os.Symlink("xtables-nft-multi", filepath.Join(rootfs, "usr/sbin/iptables")); err != nil {
		t.Fatal(err)
	}
	binary = filepath.Join(d, "kube-proxy")
	write(binary, "#!kube-proxy", 0o700)
	return rootfs, binary
}

func testSpec(rootfs, binary string) Spec {
	return Spec{
		Name:       testName,
		Dirs:       []Dir{{Src: rootfs, Dst: "/"}},
		Files:      []File{{Src: binary, Dst: "/usr/local/bin/kube-proxy", Mode: 0o755}},
		Entrypoint: []string{"/usr/local/bin/kube-proxy"},
		Cmd:        []string{"--help"},
		Env:        []string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin"},
		User:       "0:0",
		WorkingDir: "/",
		Created:    time.Unix(1700000000, 0),
	}
}

type tarEntry struct {
	typ        byte
	mode       int64
	uid, gid   int
	mtime      int64
	link, data string
}

// readImage reads the layout's index and the image of name: its config and its layer's entries
// in order.
func readImage(t *testing.T, dir, name string) (v1.IndexManifest, v1.Descriptor, *v1.ConfigFile, []string, map[string]tarEntry) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(im.Manifests, func(d v1.Descriptor) bool { return d.Annotations[AnnotationRefName] == name })
	if i < 0 {
		t.Fatalf("index.json has no image named %s: %+v", name, im.Manifests)
	}
	desc := im.Manifests[i]
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var order []string
	entries := map[string]tarEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		order = append(order, h.Name)
		entries[h.Name] = tarEntry{h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime.Unix(), h.Linkname, string(b)}
	}
	if mt, err := layers[0].MediaType(); err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %q, %v; want %s", mt, err, types.OCILayer)
	}
	return *im, desc, cfg, order, entries
}

func TestPack(t *testing.T) {
	rootfs, binary := hostTree(t)
	dir := filepath.Join(t.TempDir(), "layout")
	res, err := Pack(context.Background(), dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	im, desc, cfg, order, e := readImage(t, dir, testName)
	if res.Digest != desc.Digest || res.Name != testName || res.Replaced || res.Entries != len(order) {
		t.Errorf("result %+v; index entry %s, %d entries", res, desc.Digest, len(order))
	}
	if len(im.Manifests) != 1 || desc.Annotations[AnnotationContainerName] != testName || desc.Platform == nil || desc.Platform.Architecture != "amd64" || desc.Platform.OS != "linux" {
		t.Errorf("index entry %+v, want one, annotated with both names, linux/amd64", im.Manifests)
	}
	if cfg.Architecture != "amd64" || cfg.OS != "linux" || !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/kube-proxy"}) ||
		!slices.Equal(cfg.Config.Cmd, []string{"--help"}) || !slices.Equal(cfg.Config.Env, []string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin"}) ||
		cfg.Config.User != "0:0" || cfg.Config.WorkingDir != "/" || cfg.Created.Unix() != 1700000000 {
		t.Errorf("config %+v", cfg)
	}
	want := []string{"usr/", "usr/lib/", "usr/lib/x86_64-linux-gnu/", "usr/lib/x86_64-linux-gnu/libx.so.1", "usr/local/", "usr/local/bin/",
		"usr/local/bin/kube-proxy", "usr/sbin/", "usr/sbin/iptables", "usr/sbin/su", "usr/sbin/xtables-nft-multi", "var/", "var/empty/"}
	if !slices.Equal(order, want) {
		t.Errorf("layer entries\n%q\nwant\n%q", order, want)
	}
	for n, x := range e {
		if x.uid != 0 || x.gid != 0 || x.mtime != 1700000000 {
			t.Errorf("%s: owner %d:%d mtime %d, want 0:0 at 1700000000", n, x.uid, x.gid, x.mtime)
		}
	}
	for n, w := range map[string]tarEntry{
		"usr/local/":                 {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin/kube-proxy":   {typ: tar.TypeReg, mode: 0o755, data: "#!kube-proxy"},
		"usr/sbin/su":                {typ: tar.TypeReg, mode: 0o4755, data: "su"},
		"usr/sbin/iptables":          {typ: tar.TypeSymlink, mode: 0o777, link: "xtables-nft-multi"},
		"usr/sbin/xtables-nft-multi": {typ: tar.TypeReg, mode: 0o755, data: "multi"},
	} {
		g := e[n]
		if g.typ != w.typ || g.mode != w.mode || g.link != w.link || g.data != w.data {
			t.Errorf("%s: type %c mode %o link %q data %q; want %c %o %q %q", n, g.typ, g.mode, g.link, g.data, w.typ, w.mode, w.link, w.data)
		}
	}
}

// TestPackDeterministic: the same inputs give the same digest, whatever the host files' times
// and the layout; another Created time or content gives another.
func TestPackDeterministic(t *testing.T) {
	ctx := context.Background()
	rootfs, binary := hostTree(t)
	a, err := Pack(ctx, filepath.Join(t.TempDir(), "a"), testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1000, 0)
	filepath.WalkDir(rootfs, func(p string, _ fs.DirEntry, _ error) error { return os.Chtimes(p, old, old) })
	b, err := Pack(ctx, filepath.Join(t.TempDir(), "b"), testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != b.Digest {
		t.Errorf("same inputs, new host mtimes: %s then %s", a.Digest, b.Digest)
	}
	s := testSpec(rootfs, binary)
	s.Created = time.Unix(1700000001, 0)
	c, err := Pack(ctx, filepath.Join(t.TempDir(), "c"), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest == a.Digest {
		t.Error("another Created time gave the same digest")
	}
	// The zero time is the epoch.
	s.Created = time.Time{}
	d1, err := Pack(ctx, filepath.Join(t.TempDir(), "d"), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Created = time.Unix(0, 0)
	d2, err := Pack(ctx, filepath.Join(t.TempDir(), "e"), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d1.Digest != d2.Digest {
		t.Errorf("zero Created %s != epoch %s", d1.Digest, d2.Digest)
	}
}

// TestPackReplace: packing a name again replaces its index entry in place and keeps the others.
func TestPackReplace(t *testing.T) {
	ctx := context.Background()
	rootfs, binary := hostTree(t)
	dir := t.TempDir() // an existing empty directory becomes a layout
	first, err := Pack(ctx, dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	other := testSpec(rootfs, binary)
	other.Name = "registry.imgctl.invalid/kubernetes/pause:3.4.1"
	o, err := Pack(ctx, dir, other, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Pack(ctx, dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != first.Digest || !again.Replaced {
		t.Errorf("the same image again: %+v, want digest %s and Replaced", again, first.Digest)
	}
	os.WriteFile(binary, []byte("#!kube-proxy v2"), 0o755)
	second, err := Pack(ctx, dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.Digest == first.Digest || !second.Replaced {
		t.Errorf("new content: %+v, want a new digest and Replaced", second)
	}
	im, desc, _, _, e := readImage(t, dir, testName)
	if len(im.Manifests) != 2 || im.Manifests[0].Digest != second.Digest || im.Manifests[1].Digest != o.Digest || desc.Digest != second.Digest {
		t.Errorf("index %+v, want [%s (replaced in place), %s]", im.Manifests, second.Digest, o.Digest)
	}
	if e["usr/local/bin/kube-proxy"].data != "#!kube-proxy v2" {
		t.Errorf("the layout's %s has the old binary", testName)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", ".tmp-*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

func TestPackRefuses(t *testing.T) {
	rootfs, binary := hostTree(t)
	fifo := filepath.Join(t.TempDir(), "fifodir")
	os.Mkdir(fifo, 0o755)
	if err := syscall.Mkfifo(filepath.Join(fifo, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(*Spec)
		want string
		spec bool // wraps ErrInvalid
	}{
		{"no registry", func(s *Spec) { s.Name = "kube-proxy:v1.21.13" }, `image name "kube-proxy:v1.21.13"`, true},
		{"no tag", func(s *Spec) { s.Name = "registry.imgctl.invalid/kubernetes/kube-proxy" }, "expected REGISTRY/REPOSITORY:TAG", true},
		{"digest", func(s *Spec) { s.Name = "r.test/x@sha256:" + strings.Repeat("a", 64) }, "expected REGISTRY/REPOSITORY:TAG", true},
		{"upper case", func(s *Spec) { s.Name = "r.test/Kube:1" }, `image name "r.test/Kube:1"`, true},
		{"option", func(s *Spec) { s.Name = "--all" }, `image name "--all"`, true},
		{"docker hub default", func(s *Spec) { s.Name = "docker.io/x/y:1" }, "expected a full name", true},
		{"relative dst", func(s *Spec) { s.Files[0].Dst = "usr/bin/x" }, `path "usr/bin/x": expected an absolute clean path`, true},
		{"dot dot", func(s *Spec) { s.Files[0].Dst = "/usr/../etc/x" }, `path "/usr/../etc/x"`, true},
		{"trailing slash", func(s *Spec) { s.Files[0].Dst = "/usr/bin/" }, `path "/usr/bin/"`, true},
		{"file at root", func(s *Spec) { s.Files[0].Dst = "/" }, "not /", true},
		{"dir dot dot", func(s *Spec) { s.Dirs[0].Dst = "/../x" }, `path "/../x"`, true},
		{"mode type bits", func(s *Spec) { s.Files[0].Mode = fs.ModeDir | 0o755 }, "expected permission bits only", true},
		{"env", func(s *Spec) { s.Env = []string{"=x"} }, `environment entry "=x"`, true},
		{"env no value", func(s *Spec) { s.Env = []string{"PATH"} }, `environment entry "PATH"`, true},
		{"user name", func(s *Spec) { s.User = "root" }, `user "root": expected UID or UID:GID`, true},
		{"workdir", func(s *Spec) { s.WorkingDir = "tmp" }, `working directory: invalid image spec: path "tmp"`, true},
		{"nul", func(s *Spec) { s.Cmd = []string{"a\x00b"} }, "contains NUL", true},
		{"missing file", func(s *Spec) { s.Files[0].Src = "/nonexistent/kube-proxy" }, "/nonexistent/kube-proxy: no such file", false},
		{"file is a dir", func(s *Spec) { s.Files[0].Src = rootfs }, "expected a regular file", true},
		{"dir is a file", func(s *Spec) { s.Dirs[0].Src = binary }, "expected a directory", true},
		{"fifo", func(s *Spec) { s.Dirs = append(s.Dirs, Dir{Src: fifo, Dst: "/x"}) }, "pipe is p---------: expected a directory, regular file or symbolic link", true},
		{"twice", func(s *Spec) { s.Files = append(s.Files, File{Src: binary, Dst: "/usr/sbin/su"}) }, "/usr/sbin/su is given twice: by " + rootfs + " and by " + binary, true},
		{"under a symlink", func(s *Spec) { s.Files = append(s.Files, File{Src: binary, Dst: "/usr/sbin/iptables/x"}) }, "/usr/sbin/iptables/x (from " + binary + ") would be inside /usr/sbin/iptables, which is not a directory", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := testSpec(rootfs, binary)
			c.edit(&s)
			dir := filepath.Join(t.TempDir(), "layout")
			_, err := Pack(context.Background(), dir, s, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
			if errors.Is(err, ErrInvalid) != c.spec {
				t.Errorf("errors.Is(err, ErrInvalid) = %v, want %v", !c.spec, c.spec)
			}
			if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
				t.Error("a refused spec still wrote the layout")
			}
		})
	}
}

// TestPackRefusesForeignLayout: a directory whose oci-layout is not an OCI layout marker, or whose
// index.json is not an index, is not written over.
func TestPackRefusesForeignLayout(t *testing.T) {
	rootfs, binary := hostTree(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte("hello"), 0o644)
	if _, err := Pack(context.Background(), dir, testSpec(rootfs, binary), nil); err == nil || !strings.Contains(err.Error(), "expected an OCI layout marker") {
		t.Errorf("err = %v, want the marker named", err)
	}
	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.json"), []byte("[1]"), 0o644)
	if _, err := Pack(context.Background(), dir, testSpec(rootfs, binary), nil); err == nil || !strings.Contains(err.Error(), "index.json: expected an OCI image index") {
		t.Errorf("err = %v, want index.json named", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "index.json")); string(b) != "[1]" {
		t.Errorf("index.json was rewritten: %s", b)
	}
}

// TestPackSkopeo: skopeo, a real OCI peer, reads the image from the layout by its name.
func TestPackSkopeo(t *testing.T) {
	testenv.Tools(t, "skopeo")
	rootfs, binary := hostTree(t)
	dir := t.TempDir()
	res, err := Pack(context.Background(), dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "skopeo", "inspect", "--", "oci:"+dir+":"+testName).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("skopeo inspect: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		Digest, Architecture, Os string
		Layers                   []string
		Env                      []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.Digest != res.Digest.String() || got.Architecture != "amd64" || got.Os != "linux" || len(got.Layers) != 1 || !slices.Equal(got.Env, testSpec(rootfs, binary).Env) {
		t.Errorf("skopeo inspect: %s\nwant digest %s, linux/amd64, one layer", out, res.Digest)
	}
}

// TestPackSourceReads: imgctl's oci-layout source bakes the packed image as an OCI archive named
// as the index says, the way a spec bakes the control-plane images.
func TestPackSourceReads(t *testing.T) {
	rootfs, binary := hostTree(t)
	dir := t.TempDir()
	res, err := Pack(context.Background(), dir, testSpec(rootfs, binary), nil)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := cache.Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	env := &source.Env{Cache: ca, Fetch: &fetch.Client{}, MTime: time.Unix(1700000000, 0)}
	raw := "oci-layout://" + dir + "@" + res.Digest.String() + "#image=/usr/lib/imgctl/images/kube-proxy.tar&name=" + testName
	u, err := source.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pin, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := env.Materialize(ctx, u, pin)
	if err != nil {
		t.Fatal(err)
	}
	f, err := env.Cache.Open(tr.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := tar.NewReader(f)
	var archive []byte
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "usr/lib/imgctl/images/kube-proxy.tar" {
			archive, _ = io.ReadAll(r)
		}
	}
	if archive == nil {
		t.Fatal("the source's tar has no usr/lib/imgctl/images/kube-proxy.tar")
	}
	ar := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := ar.Next()
		if err == io.EOF {
			t.Fatal("the archive has no index.json")
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != "index.json" {
			continue
		}
		var idx v1.IndexManifest
		if err := json.NewDecoder(ar).Decode(&idx); err != nil {
			t.Fatal(err)
		}
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != res.Digest || idx.Manifests[0].Annotations["io.containerd.image.name"] != testName {
			t.Errorf("archive index %+v, want %s named %s", idx, res.Digest, testName)
		}
		return
	}
}
