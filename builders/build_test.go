package builders

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/lock"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// tarOf builds a tar from name -> content ("DIR" for a directory, "->target" for a symlink).
func tarOf(t *testing.T, files map[string]string, order ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range order {
		c := files[n]
		hdr := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(c))}
		switch {
		case c == "DIR":
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeDir, 0, 0o755
		case strings.HasPrefix(c, "->"):
			hdr.Typeflag, hdr.Size, hdr.Linkname = tar.TypeSymlink, 0, c[2:]
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			io.WriteString(tw, c)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

type fixture struct {
	dir     string
	srv     *httptest.Server
	ociRef  string
	sources map[spec.Role][]string
	hits    map[string]int
}

// newFixture serves a binary, its checksum file and a tarball over HTTP, pushes a random
// image to an in-process registry, and writes a base tar and a directory on disk.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), hits: map[string]int{}}
	binary := bytes.Repeat([]byte("kubelet-binary\n"), 1000)
	cni := gz(tarOf(t, map[string]string{"bridge": "BRIDGE", "loopback": "LOOP"}, "bridge", "loopback"))
	files := map[string][]byte{
		"/bin/kubelet":        binary,
		"/bin/kubelet.sha256": []byte(sha(binary) + "  kubelet\n"),
		"/cni.tgz":            cni,
	}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits[r.URL.Path]++
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, r.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(f.srv.Close)

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/test/extra:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	dg, _ := img.Digest()
	f.ociRef = "oci://" + ref.Context().Name() + "@" + dg.String()

	base := tarOf(t, map[string]string{
		"./": "DIR", "./usr/": "DIR", "./usr/bin/": "DIR", "./bin": "->usr/bin", "./etc/": "DIR", "./etc/os-release": "ID=test\n",
	}, "./", "./usr/", "./usr/bin/", "./bin", "./etc/", "./etc/os-release")
	basePath := filepath.Join(f.dir, "base.tar.gz")
	os.WriteFile(basePath, gz(base), 0o644)
	extra := filepath.Join(f.dir, "extra")
	os.MkdirAll(filepath.Join(extra, "etc/imgctl"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/imgctl/hello"), []byte("hello\n"), 0o644)

	f.sources = map[spec.Role][]string{
		spec.RoleBase: {"file://" + basePath},
		spec.RoleKubelet: {
			f.srv.URL + "/bin/kubelet#sha256-from=" + f.srv.URL + "/bin/kubelet.sha256&path=/usr/bin/kubelet&mode=0755",
			f.srv.URL + "/cni.tgz#sha256=" + sha(cni) + "&prefix=/opt/cni/bin",
		},
		spec.RoleExtra: {"file://" + extra + "/", f.ociRef},
	}
	return f
}

func (f *fixture) spec(t *testing.T) *spec.NodeImage {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata:\n  name: test-node\nspec:\n  kubernetes:\n    version: 1.21.13\n  layers:\n")
	for _, r := range spec.Roles() {
		if len(f.sources[r]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "    - role: %s\n      version: v-%s\n      sources:\n", r, r)
		for _, s := range f.sources[r] {
			fmt.Fprintf(&b, "        - %q\n", s)
		}
	}
	n, err := spec.Parse("test.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type env struct {
	opts  Options
	cache string
}

func newEnv(t *testing.T, n *spec.NodeImage, dir string) env {
	t.Helper()
	ctx := context.Background()
	ca, err := cache.Open(filepath.Join(dir, "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch := int64(1700000000)
	return env{cache: filepath.Join(dir, "cache"), opts: Options{
		Spec: n, LockPath: filepath.Join(dir, "imgctl.lock"), SourceDateEpoch: &epoch,
		Env:   &source.Env{Cache: ca, Fetch: &fetch.Client{Attempts: 2}},
		Store: st, ImgctlVersion: "test",
	}}
}

func TestBuildReproducibleFromFreshCaches(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var results []*Result
	var lockFile string
	for i := 0; i < 2; i++ {
		e := newEnv(t, f.spec(t), t.TempDir())
		if lockFile != "" {
			os.WriteFile(e.opts.LockPath, []byte(lockFile), 0o644)
		}
		res, err := Run(ctx, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
		b, err := os.ReadFile(e.opts.LockPath)
		if err != nil {
			t.Fatal(err)
		}
		lockFile = string(b)
	}
	a, b := results[0].Image, results[1].Image
	if a.Config.Rootfs.Digest != b.Config.Rootfs.Digest || a.Digest() != b.Digest() {
		t.Fatalf("two builds differ: rootfs %s vs %s, image %s vs %s", a.Config.Rootfs.Digest, b.Config.Rootfs.Digest, a.Digest(), b.Digest())
	}
	if !strings.Contains(lockFile, "sha256 from "+f.srv.URL+"/bin/kubelet.sha256") {
		t.Errorf("lock does not record where the kubelet pin came from:\n%s", lockFile)
	}
	if len(a.Config.Layers) != 3 || a.Config.Layers[1].Role != "kubelet" || a.Config.Layers[1].Version != "v-kubelet" {
		t.Errorf("config layers = %+v", a.Config.Layers)
	}
}

// rootfsListing reads the image's rootfs from the store.
func rootfsListing(t *testing.T, st *store.Store, res *Result) map[string]*tar.Header {
	t.Helper()
	rc, err := st.OpenBlob(context.Background(), res.Image.Config.Rootfs.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

func TestBuildComposesEverySourceKind(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.spec(t), t.TempDir())
	res, err := Run(context.Background(), e.opts)
	if err != nil {
		t.Fatal(err)
	}
	files := rootfsListing(t, e.opts.Store, res)
	for name, mode := range map[string]int64{
		"usr/bin/kubelet":      0o755,
		"opt/cni/bin/bridge":   0o644,
		"etc/imgctl/hello":     0o644,
		"etc/os-release":       0o644,
		"opt/cni/bin/":         0o755, // synthesized parent
		"bin":                  0o644, // the symlink survives
		"etc/imgctl/":          0o755,
		"usr/bin/":             0o755,
		"opt/cni/bin/loopback": 0o644,
	} {
		h, ok := files[name]
		if !ok {
			t.Errorf("rootfs lacks %s", name)
			continue
		}
		if h.Mode != mode || h.ModTime.Unix() != 1700000000 {
			t.Errorf("%s: mode %o mtime %d, want %o and SOURCE_DATE_EPOCH", name, h.Mode, h.ModTime.Unix(), mode)
		}
	}
	if res.Image.Config.Rootfs.Entries != len(files) {
		t.Errorf("config says %d entries, rootfs has %d", res.Image.Config.Rootfs.Entries, len(files))
	}
	// A rebuild reuses everything: no downloads, no compose.
	hits := f.hits["/bin/kubelet"]
	again, err := Run(context.Background(), e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || f.hits["/bin/kubelet"] != hits || again.Image.Digest() != res.Image.Digest() {
		t.Errorf("rebuild: reused=%v, kubelet downloads %d -> %d, digest %s -> %s", again.Reused, hits, f.hits["/bin/kubelet"], res.Image.Digest(), again.Image.Digest())
	}
	// --offline with a warm cache works too.
	e.opts.Env.Fetch.Offline = true
	if _, err := Run(context.Background(), e.opts); err != nil {
		t.Fatalf("offline rebuild: %v", err)
	}
}

func TestBuildBadInputChangesNothing(t *testing.T) {
	f := newFixture(t)
	bad := filepath.Join(f.dir, "evil.tar")
	os.WriteFile(bad, tarOf(t, map[string]string{"../../etc/cron.d/x": "boom"}, "../../etc/cron.d/x"), 0o644)
	notDeb := filepath.Join(f.dir, "fake.deb")
	os.WriteFile(notDeb, []byte("this is not a debian package"), 0o644)
	wrong := strings.Repeat("0", 64)
	tests := []struct {
		name    string
		role    spec.Role
		sources []string
		targets []string
		want    []string
	}{
		{name: "digest mismatch", role: spec.RoleKubelet, sources: []string{f.srv.URL + "/cni.tgz#sha256=" + wrong + "&prefix=/opt"},
			want: []string{f.srv.URL + "/cni.tgz", wrong}},
		{name: "unreachable", role: spec.RoleKubelet, sources: []string{"http://127.0.0.1:1/kubelet#sha256=" + wrong + "&path=/usr/bin/kubelet"},
			want: []string{"http://127.0.0.1:1/kubelet", "--mirror", "--offline"}},
		{name: "missing", role: spec.RoleKubelet, sources: []string{f.srv.URL + "/nope.tgz#sha256=" + wrong},
			want: []string{f.srv.URL + "/nope.tgz", "404"}},
		{name: "unsafe entry", role: spec.RoleExtra, sources: []string{"file://" + bad},
			want: []string{bad, "../../etc/cron.d/x", `".." path component`}},
		{name: "not a deb", role: spec.RoleExtra, sources: []string{"file://" + notDeb},
			want: []string{notDeb, "not a Debian package"}},
		{name: "bad uri", role: spec.RoleExtra, sources: []string{"gopher://x"},
			want: []string{"test.yaml", "spec.layers[2].sources[0]", "unknown scheme"}},
		{name: "unknown target", targets: []string{"floppy"}, want: []string{`unknown target "floppy"`, "rootfs"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			saved := f.sources[tc.role]
			if tc.role != "" {
				f.sources[tc.role] = tc.sources
			}
			n := f.spec(t) // from YAML, so errors can name the line
			f.sources[tc.role] = saved
			e := newEnv(t, n, t.TempDir())
			e.opts.Targets = tc.targets
			e.opts.Env.Fetch.Backoff = 1
			_, err := Run(context.Background(), e.opts)
			if err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
			imgs, lerr := e.opts.Store.List(context.Background())
			if lerr != nil || len(imgs) != 0 {
				t.Errorf("store holds %d images after a failed build (%v)", len(imgs), lerr)
			}
			if _, err := os.Stat(e.opts.LockPath); err == nil {
				t.Error("a failed build wrote the lock file")
			}
			if tc.name == "digest mismatch" {
				// Nothing with the served (wrong) content may have entered the cache.
				ca, _ := cache.Open(e.cache, nil)
				if ca.Has(digestOf(t, f.srv.URL+"/cni.tgz")) {
					t.Error("content that failed verification is in the cache")
				}
			}
		})
	}
}

func digestOf(t *testing.T, url string) digest.Digest {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return digest.Digest("sha256:" + sha(b))
}

func TestBuildLocked(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.spec(t), t.TempDir())
	e.opts.Locked = true
	if _, err := Run(context.Background(), e.opts); !errors.Is(err, ErrLockChanged) {
		t.Fatalf("--locked without a lock: err = %v, want ErrLockChanged", err)
	}
	e.opts.Locked = false
	if _, err := Run(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.opts.Locked = true
	if _, err := Run(context.Background(), e.opts); err != nil {
		t.Fatalf("--locked with a current lock: %v", err)
	}
	l, err := lock.Load(e.opts.LockPath)
	if err != nil || l.SourceDateEpoch != 1700000000 || len(l.Sources) != 5 {
		t.Fatalf("lock = %+v, %v", l, err)
	}
}

func TestRawTargetBadInput(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		raw  RawOptions
		want []string
	}{
		{"unknown compressor", RawOptions{Compression: "brotli", Agent: "/bin/true"}, []string{`unknown compressor "brotli"`, "zstd", "xz", "gzip"}},
		{"no node agent", RawOptions{}, []string{"imgctl-node", "--node-agent"}},
		{"no kernel", RawOptions{Agent: "/bin/true"}, []string{"no kernel modules", "kernel layer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, f.spec(t), t.TempDir())
			e.opts.Targets = []string{"raw"}
			e.opts.Raw = tc.raw
			_, err := Run(context.Background(), e.opts)
			if err == nil {
				t.Fatal("raw build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q: %v", w, err)
				}
			}
			if imgs, _ := e.opts.Store.List(context.Background()); len(imgs) != 0 {
				t.Error("a failed raw build stored an image")
			}
			ingest, _ := os.ReadDir(filepath.Join(e.opts.Store.Dir(), "ingest"))
			if len(ingest) != 0 {
				t.Errorf("a failed raw build left temp files: %v", ingest)
			}
		})
	}
}

func TestSameInputsOtherTargetsAreAnotherImage(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.spec(t), t.TempDir())
	e.opts.Targets = []string{"rootfs", "rootfs"}
	a, err := Run(context.Background(), e.opts)
	if err != nil {
		t.Fatalf("repeated target: %v", err)
	}
	cfg := a.Image.Config
	cfg.Version = ""
	arts := manifest.Artifacts(a.Image.Manifest)
	if v := readableVersion(cfg, arts); v != a.Image.Config.Version {
		t.Errorf("version not reproducible: %s vs %s", v, a.Image.Config.Version)
	}
	more := append(arts, manifest.Artifact{Name: "disk.simg", MediaType: manifest.DiskSparseMediaType, Digest: a.Image.Config.Rootfs.Digest, Size: 1})
	if readableVersion(cfg, more) == a.Image.Config.Version {
		t.Error("the same inputs with more artifacts got the same version: the store would refuse them as a conflict")
	}
}

func TestBuildRecordsBakedBinaries(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	e := newEnv(t, f.spec(t), t.TempDir())
	e.opts.Targets = []string{"rootfs"}
	res, err := Run(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	binary := bytes.Repeat([]byte("kubelet-binary\n"), 1000)
	want := map[string]digest.Digest{"/usr/bin/kubelet": digest.Digest("sha256:" + sha(binary))}
	if !maps.Equal(res.Image.Config.Binaries, want) {
		t.Errorf("config binaries = %v, want %v (base files and non-executables are not baked binaries)", res.Image.Config.Binaries, want)
	}
	// The same list is in the rootfs, with the image's identity.
	rc, err := e.opts.Store.OpenBlob(ctx, res.Image.Config.Rootfs.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var info *imageinfo.Info
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "etc/imgctl/image.json" {
			b, _ := io.ReadAll(tr)
			if info, err = imageinfo.Parse(b); err != nil {
				t.Fatalf("image.json: %v\n%s", err, b)
			}
			if h.Mode != 0o644 {
				t.Errorf("image.json mode %o", h.Mode)
			}
		}
	}
	if info == nil {
		t.Fatal("no etc/imgctl/image.json in the rootfs")
	}
	if info.Binaries["/usr/bin/kubelet"] != string(want["/usr/bin/kubelet"]) || len(info.Binaries) != 1 {
		t.Errorf("image.json binaries = %v", info.Binaries)
	}
	if info.Name != "test-node" || info.Kubernetes != "1.21.13" || len(info.Layers) != 3 || info.Layers[1].Version != "v-kubelet" || info.SpecDigest != string(res.Image.Config.SpecDigest) {
		t.Errorf("image.json = %+v", info)
	}

	// A second build reuses the stored rootfs and still records the binaries.
	res2, err := Run(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Reused || !maps.Equal(res2.Image.Config.Binaries, want) || res2.Image.Digest() != res.Image.Digest() {
		t.Errorf("rebuild: reused=%v binaries=%v digest %s vs %s", res2.Reused, res2.Image.Config.Binaries, res2.Image.Digest(), res.Image.Digest())
	}
}
