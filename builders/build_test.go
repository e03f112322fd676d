package builders_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/builders/rootfs"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/lock"
	"github.com/imgctl/imgctl/layers/spec"
)

// Aliases for the test kit (builders/buildtest) keep the tests short.
var (
	tarOf      = buildtest.TarOf
	sha        = buildtest.Sha
	newFixture = buildtest.NewFixture
	newEnv     = buildtest.NewEnv
)

func TestBuildReproducibleFromFreshCaches(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var results []*builders.Result
	var lockFile string
	for i := 0; i < 2; i++ {
		e := newEnv(t, f.Spec(t), t.TempDir())
		if lockFile != "" {
			os.WriteFile(e.Opts.LockPath, []byte(lockFile), 0o644)
		}
		res, err := builders.Run(ctx, e.Opts)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
		b, err := os.ReadFile(e.Opts.LockPath)
		if err != nil {
			t.Fatal(err)
		}
		lockFile = string(b)
	}
	a, b := results[0].Image, results[1].Image
	if a.Config.Rootfs.Digest != b.Config.Rootfs.Digest || a.Digest() != b.Digest() {
		t.Fatalf("two builds differ: rootfs %s vs %s, image %s vs %s", a.Config.Rootfs.Digest, b.Config.Rootfs.Digest, a.Digest(), b.Digest())
	}
	if !strings.Contains(lockFile, "sha256 from "+f.Srv.URL+"/bin/kubelet.sha256") {
		t.Errorf("lock does not record where the kubelet pin came from:\n%s", lockFile)
	}
	if len(a.Config.Layers) != 3 || a.Config.Layers[1].Role != "kubelet" || a.Config.Layers[1].Version != "v-kubelet" {
		t.Errorf("config layers = %+v", a.Config.Layers)
	}
}

// rootfsListing reads the image's rootfs from the store.
func rootfsListing(t *testing.T, st *store.Store, res *builders.Result) map[string]*tar.Header {
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
	e := newEnv(t, f.Spec(t), t.TempDir())
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	files := rootfsListing(t, e.Opts.Store, res)
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
	hits := f.Hits("/bin/kubelet")
	again, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || f.Hits("/bin/kubelet") != hits || again.Image.Digest() != res.Image.Digest() {
		t.Errorf("rebuild: reused=%v, kubelet downloads %d -> %d, digest %s -> %s", again.Reused, hits, f.Hits("/bin/kubelet"), res.Image.Digest(), again.Image.Digest())
	}
	// --offline with a warm cache works too.
	e.Opts.Env.Fetch.Offline = true
	if _, err := builders.Run(context.Background(), e.Opts); err != nil {
		t.Fatalf("offline rebuild: %v", err)
	}
}

func TestBuildBadInputChangesNothing(t *testing.T) {
	f := newFixture(t)
	bad := filepath.Join(f.Dir, "evil.tar")
	os.WriteFile(bad, tarOf(t, map[string]string{"../../etc/cron.d/x": "boom"}, "../../etc/cron.d/x"), 0o644)
	notDeb := filepath.Join(f.Dir, "fake.deb")
	os.WriteFile(notDeb, []byte("this is not a debian package"), 0o644)
	wrong := strings.Repeat("0", 64)
	tests := []struct {
		name    string
		role    spec.Role
		sources []string
		want    []string
	}{
		{name: "digest mismatch", role: spec.RoleKubelet, sources: []string{f.Srv.URL + "/cni.tgz#sha256=" + wrong + "&prefix=/opt"},
			want: []string{f.Srv.URL + "/cni.tgz", wrong}},
		{name: "unreachable", role: spec.RoleKubelet, sources: []string{"http://127.0.0.1:1/kubelet#sha256=" + wrong + "&path=/usr/bin/kubelet"},
			want: []string{"http://127.0.0.1:1/kubelet", "--mirror", "--offline"}},
		{name: "missing", role: spec.RoleKubelet, sources: []string{f.Srv.URL + "/nope.tgz#sha256=" + wrong},
			want: []string{f.Srv.URL + "/nope.tgz", "404"}},
		{name: "unsafe entry", role: spec.RoleExtra, sources: []string{"file://" + bad},
			want: []string{bad, "../../etc/cron.d/x", `".." path component`}},
		{name: "not a deb", role: spec.RoleExtra, sources: []string{"file://" + notDeb},
			want: []string{notDeb, "not a Debian package"}},
		{name: "bad uri", role: spec.RoleExtra, sources: []string{"gopher://x"},
			want: []string{"test.yaml", "spec.layers[2].sources[0]", "unknown scheme"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			saved := f.Sources[tc.role]
			if tc.role != "" {
				f.Sources[tc.role] = tc.sources
			}
			n := f.Spec(t) // from YAML, so errors can name the line
			f.Sources[tc.role] = saved
			e := newEnv(t, n, t.TempDir())
			e.Opts.Env.Fetch.Backoff = 1
			_, err := builders.Run(context.Background(), e.Opts)
			if err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
			imgs, lerr := e.Opts.Store.List(context.Background())
			if lerr != nil || len(imgs) != 0 {
				t.Errorf("store holds %d images after a failed build (%v)", len(imgs), lerr)
			}
			if _, err := os.Stat(e.Opts.LockPath); err == nil {
				t.Error("a failed build wrote the lock file")
			}
			if tc.name == "digest mismatch" {
				// Nothing with the served (wrong) content may have entered the cache.
				ca, _ := cache.Open(e.Cache, nil)
				if ca.Has(digestOf(t, f.Srv.URL+"/cni.tgz")) {
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
	e := newEnv(t, f.Spec(t), t.TempDir())
	e.Opts.Locked = true
	if _, err := builders.Run(context.Background(), e.Opts); !errors.Is(err, builders.ErrLockChanged) {
		t.Fatalf("--locked without a lock: err = %v, want ErrLockChanged", err)
	}
	e.Opts.Locked = false
	if _, err := builders.Run(context.Background(), e.Opts); err != nil {
		t.Fatal(err)
	}
	e.Opts.Locked = true
	if _, err := builders.Run(context.Background(), e.Opts); err != nil {
		t.Fatalf("--locked with a current lock: %v", err)
	}
	l, err := lock.Load(e.Opts.LockPath)
	if err != nil || l.SourceDateEpoch != 1700000000 || len(l.Sources) != 5 {
		t.Fatalf("lock = %+v, %v", l, err)
	}

	// A pin that no longer matches what the source gives (here: the lock was edited, as a
	// stale lock would be after the source changed) fails --locked, naming that source.
	changed := l.Sources[len(l.Sources)-1]
	l.Sources[len(l.Sources)-1].Digest = digest.Digest("sha256:" + strings.Repeat("0", 64))
	l.Sources[len(l.Sources)-1].Resolved = "stale"
	if err := l.Save(e.Opts.LockPath); err != nil {
		t.Fatal(err)
	}
	e.Opts.UpdateLock = true
	_, err = builders.Run(context.Background(), e.Opts)
	var lce *builders.LockChangedError
	if !errors.As(err, &lce) || !errors.Is(err, builders.ErrLockChanged) {
		t.Fatalf("--locked --update-lock with a stale pin: err = %v, want a LockChangedError", err)
	}
	if len(lce.Changes) != 1 || lce.Changes[0].URI != changed.URI {
		t.Errorf("changes = %+v, want only %s", lce.Changes, changed.URI)
	}
	want := changed.Role + " " + changed.URI + ": sha256:000000000000 → " + changed.Digest.String()[:19]
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), e.Opts.LockPath) {
		t.Errorf("error %q does not name the lock file and the change %q", err, want)
	}
}

func TestSameInputsOtherTargetsAreAnotherImage(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.Spec(t), t.TempDir())
	e.Opts.Targets = []builders.Target{rootfs.New(), rootfs.New()}
	a, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatalf("repeated target: %v", err)
	}
	cfg := a.Image.Config
	cfg.Version = ""
	arts := manifest.Artifacts(a.Image.Manifest)
	if v := builders.ReadableVersion(cfg, arts); v != a.Image.Config.Version {
		t.Errorf("version not reproducible: %s vs %s", v, a.Image.Config.Version)
	}
	more := append(arts, manifest.Artifact{Name: "disk.simg", MediaType: manifest.DiskSparseMediaType, Digest: a.Image.Config.Rootfs.Digest, Size: 1})
	if builders.ReadableVersion(cfg, more) == a.Image.Config.Version {
		t.Error("the same inputs with more artifacts got the same version: the store would refuse them as a conflict")
	}
}

func TestBuildRecordsBakedBinaries(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	e := newEnv(t, f.Spec(t), t.TempDir())
	res, err := builders.Run(ctx, e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	binary := bytes.Repeat([]byte("kubelet-binary\n"), 1000)
	want := map[string]digest.Digest{"/usr/bin/kubelet": digest.Digest("sha256:" + sha(binary))}
	if !maps.Equal(res.Image.Config.Binaries, want) {
		t.Errorf("config binaries = %v, want %v (base files and non-executables are not baked binaries)", res.Image.Config.Binaries, want)
	}
	// The same list is in the rootfs, with the image's identity.
	rc, err := e.Opts.Store.OpenBlob(ctx, res.Image.Config.Rootfs.Digest)
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
	res2, err := builders.Run(ctx, e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Reused || !maps.Equal(res2.Image.Config.Binaries, want) || res2.Image.Digest() != res.Image.Digest() {
		t.Errorf("rebuild: reused=%v binaries=%v digest %s vs %s", res2.Reused, res2.Image.Config.Binaries, res2.Image.Digest(), res.Image.Digest())
	}
}
