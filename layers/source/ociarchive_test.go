package source

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
)

const archivePath = "/usr/lib/imgctl/images/pause.tar"

var testEpoch = time.Unix(1700000000, 0).UTC()

// testImage is a random image whose config names platform os/arch. oci selects OCI media
// types (manifest, config and layers); otherwise they are Docker schema 2 ones.
func testImage(t *testing.T, arch string, oci bool) v1.Image {
	t.Helper()
	var img v1.Image
	if oci {
		img = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		for range 2 {
			l, err := random.Layer(2048, types.OCILayer)
			if err != nil {
				t.Fatal(err)
			}
			if img, err = mutate.AppendLayers(img, l); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		var err error
		if img, err = random.Image(2048, 2); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{"/pause"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// testIndex lists an arm64 image first, then the amd64 one the archive must hold.
func testIndex(t *testing.T) (v1.ImageIndex, v1.Image) {
	t.Helper()
	amd := testImage(t, "amd64", false)
	arm := testImage(t, "arm64", false)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	return idx, amd
}

// startRegistry serves an in-memory registry on loopback and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t *testing.T, ref string, x any) string {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	var d v1.Hash
	switch x := x.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(r, x)
		d, _ = x.Digest()
	case v1.Image:
		err = remote.Write(r, x)
		d, _ = x.Digest()
	}
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func newTestEnv(t *testing.T) *Env {
	t.Helper()
	ca, err := cache.Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Cache: ca, MTime: testEpoch}
}

// materializeArchive resolves and materializes raw, checks the layer is exactly one file at
// archivePath (0644, root, SOURCE_DATE_EPOCH) and returns the tar and that file's bytes.
func materializeArchive(t *testing.T, env *Env, raw string) (Tar, []byte) {
	t.Helper()
	ctx := context.Background()
	u, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pin.Digest != u.Digest {
		t.Errorf("pin %s, want the URI's digest %s", pin.Digest, u.Digest)
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
	var names []string
	var body []byte
	r := tar.NewReader(f)
	for {
		hdr, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Typeflag != tar.TypeReg || hdr.Mode != 0o644 || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || !hdr.ModTime.Equal(env.archiveMTime()) {
			t.Errorf("layer entry %+v: want a regular file, mode 0644, 0:0 without names, mtime %s", hdr, env.archiveMTime())
		}
		if body, err = io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{strings.TrimPrefix(archivePath, "/")}; !slices.Equal(names, want) || tr.Entries != 1 {
		t.Fatalf("layer entries = %q (%d), want exactly %q", names, tr.Entries, want)
	}
	return tr, body
}

// checkArchive checks that archive is an OCI image layout tar holding exactly img, named
// wantName, with deterministic headers.
func checkArchive(t *testing.T, archive []byte, img v1.Image, wantName string, mtime time.Time) {
	t.Helper()
	md, _ := img.Digest()
	rawManifest, _ := img.RawManifest()
	mt, _ := img.MediaType()
	m, _ := img.Manifest()
	want := []string{"blobs/sha256/" + md.Hex, "blobs/sha256/" + m.Config.Digest.Hex}
	for _, l := range m.Layers {
		want = append(want, "blobs/sha256/"+l.Digest.Hex)
	}
	slices.Sort(want)
	want = append(append([]string{"blobs/", "blobs/sha256/"}, want...), "index.json", "oci-layout")

	files := map[string][]byte{}
	var names []string
	r := tar.NewReader(bytes.NewReader(archive))
	for {
		hdr, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		mode := int64(0o644)
		if hdr.Typeflag == tar.TypeDir {
			mode = 0o755
		}
		if hdr.Mode != mode || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" || !hdr.ModTime.Equal(mtime) || len(hdr.PAXRecords) > 0 {
			t.Errorf("archive entry %+v: want mode %o, 0:0 without names, mtime %s, no PAX records", hdr, mode, mtime)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = b
		if hex, ok := strings.CutPrefix(hdr.Name, "blobs/sha256/"); ok && hex != "" {
			if got := digest.FromBytes(b).Encoded(); got != hex {
				t.Errorf("%s holds content with digest %s", hdr.Name, got)
			}
		}
	}
	if !slices.Equal(names, want) {
		t.Fatalf("archive entries:\n got %q\nwant %q", names, want)
	}
	if !bytes.Equal(files["blobs/sha256/"+md.Hex], rawManifest) {
		t.Error("the manifest blob is not the manifest as served")
	}
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", got)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %s", files["index.json"])
	}
	d := idx.Manifests[0]
	if d.Digest.String() != md.String() || d.Size != int64(len(rawManifest)) || d.MediaType != string(mt) {
		t.Errorf("index.json descriptor %+v, want %s %s (%d bytes)", d, mt, md, len(rawManifest))
	}
	if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != "amd64" {
		t.Errorf("index.json platform = %+v, want linux/amd64", d.Platform)
	}
	wantAnn := map[string]string{"org.opencontainers.image.ref.name": wantName, "io.containerd.image.name": wantName}
	if len(d.Annotations) != len(wantAnn) || d.Annotations["org.opencontainers.image.ref.name"] != wantName || d.Annotations["io.containerd.image.name"] != wantName {
		t.Errorf("annotations = %v, want %v", d.Annotations, wantAnn)
	}

	// The layout is one go-containerregistry reads back as the same, valid image.
	dir := t.TempDir()
	for n, b := range files {
		if strings.HasSuffix(n, "/") {
			continue
		}
		os.MkdirAll(filepath.Join(dir, filepath.Dir(n)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Image(md)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(got); err != nil {
		t.Errorf("the archive's image is not valid: %v", err)
	}
}

func TestOCIArchiveFromRegistry(t *testing.T) {
	host := startRegistry(t)
	idx, amd := testIndex(t)
	idxDigest := push(t, host+"/test/pause:3.9", idx)
	plain := testImage(t, "amd64", true)
	plainDigest := push(t, host+"/test/plain:1", plain)
	arm := testImage(t, "arm64", false)
	armDigest := push(t, host+"/test/arm:1", arm)

	env := newTestEnv(t)
	tests := []struct {
		raw      string
		img      v1.Image
		wantName string
	}{
		{raw: "oci://" + host + "/test/pause:3.9@" + idxDigest + "#image=" + archivePath, img: amd, wantName: host + "/test/pause:3.9"},
		{raw: "oci://" + host + "/test/pause@" + idxDigest + "#image=" + archivePath, img: amd, wantName: host + "/test/pause@" + idxDigest},
		{raw: "oci://" + host + "/test/plain@" + plainDigest + "#image=" + archivePath, img: plain, wantName: host + "/test/plain@" + plainDigest},
		{raw: "oci://" + host + "/test/pause@" + idxDigest + "#image=" + archivePath + "&name=registry.k8s.io/pause:3.9", img: amd, wantName: "registry.k8s.io/pause:3.9"},
	}
	layers := map[digest.Digest]string{}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			u, err := Parse(tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			if u.Kind != KindOCIArchive || !u.Remote() {
				t.Errorf("kind %s, remote %v: want %s, remote", u.Kind, u.Remote(), KindOCIArchive)
			}
			tr, archive := materializeArchive(t, env, tc.raw)
			checkArchive(t, archive, tc.img, tc.wantName, testEpoch)
			// Same cache, different name: never the cached tar of another name.
			if prev, ok := layers[tr.Digest]; ok {
				t.Errorf("same layer %s as %s", tr.Digest, prev)
			}
			layers[tr.Digest] = tc.raw
		})
	}

	t.Run("deterministic", func(t *testing.T) {
		raw := tests[0].raw
		tr1, a1 := materializeArchive(t, env, raw) // cached
		tr2, a2 := materializeArchive(t, newTestEnv(t), raw)
		if tr1.Digest != tr2.Digest || !bytes.Equal(a1, a2) {
			t.Errorf("two materializations differ: %s and %s", tr1.Digest, tr2.Digest)
		}
		later := newTestEnv(t)
		later.MTime = testEpoch.Add(time.Hour)
		tr3, a3 := materializeArchive(t, later, raw)
		checkArchive(t, a3, amd, tests[0].wantName, later.MTime)
		if tr3.Digest == tr1.Digest {
			t.Error("another SOURCE_DATE_EPOCH gave the same layer")
		}
		// Without SOURCE_DATE_EPOCH (imgctl layers inspect) the times are the Unix epoch.
		unset := newTestEnv(t)
		unset.MTime = time.Time{}
		_, a5 := materializeArchive(t, unset, raw)
		checkArchive(t, a5, amd, tests[0].wantName, time.Unix(0, 0))
		// A different path is a different layer, with the same archive inside.
		u, _ := Parse(strings.Replace(raw, archivePath, "/var/lib/images/pause.tar", 1))
		tr4, err := env.Materialize(context.Background(), u, Pin{URI: u.Raw, Digest: u.Digest})
		if err != nil {
			t.Fatal(err)
		}
		if tr4.Digest == tr1.Digest {
			t.Error("another image path gave the same layer")
		}
	})

	t.Run("offline", func(t *testing.T) {
		raw := tests[0].raw
		u, _ := Parse(raw)
		cold := newTestEnv(t)
		cold.Fetch = &fetch.Client{Offline: true}
		_, err := cold.Materialize(context.Background(), u, Pin{URI: raw, Digest: u.Digest})
		if err == nil || !strings.Contains(err.Error(), "--offline") || !strings.Contains(err.Error(), raw) {
			t.Errorf("offline, cold cache: err = %v, want one naming the URI and --offline", err)
		}
		env.Fetch = &fetch.Client{Offline: true}
		defer func() { env.Fetch = nil }()
		tr, archive := materializeArchive(t, env, raw)
		checkArchive(t, archive, amd, tests[0].wantName, testEpoch)
		if want := layers[tr.Digest]; want != raw {
			t.Errorf("offline with a warm cache gave layer %s, not the cached one", tr.Digest)
		}
	})

	t.Run("arm64 manifest", func(t *testing.T) {
		raw := "oci://" + host + "/test/arm:1@" + armDigest + "#image=" + archivePath
		u, _ := Parse(raw)
		_, err := newTestEnv(t).Materialize(context.Background(), u, Pin{URI: raw, Digest: u.Digest})
		if err == nil || !strings.Contains(err.Error(), "linux/arm64, expected linux/amd64") || !strings.Contains(err.Error(), raw) {
			t.Errorf("err = %v, want one naming the URI and the arm64 platform", err)
		}
	})
}

func TestOCIArchiveFromLayout(t *testing.T) {
	idx, amd := testIndex(t)
	dir := t.TempDir()
	if _, err := layout.Write(dir, idx); err != nil {
		t.Fatal(err)
	}
	p, _ := layout.FromPath(dir)
	if err := p.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	raw := "oci-layout://" + dir + "@" + d.String() + "#image=" + archivePath + "&name=example.com/pause:1"
	u, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if u.Kind != KindOCILayoutArchive || u.Remote() {
		t.Errorf("kind %s, remote %v: want %s, local", u.Kind, u.Remote(), KindOCILayoutArchive)
	}
	_, archive := materializeArchive(t, newTestEnv(t), raw)
	checkArchive(t, archive, amd, "example.com/pause:1", testEpoch)

	blob := func(h v1.Hash) string { return filepath.Join(dir, "blobs", h.Algorithm, h.Hex) }
	t.Run("corrupt layer", func(t *testing.T) {
		m, _ := amd.Manifest()
		lp := blob(m.Layers[1].Digest)
		orig, _ := os.ReadFile(lp)
		defer os.WriteFile(lp, orig, 0o644)
		os.WriteFile(lp, append([]byte("x"), orig[1:]...), 0o644)
		_, err := newTestEnv(t).Materialize(context.Background(), u, Pin{URI: raw, Digest: u.Digest})
		if err == nil || !strings.Contains(err.Error(), m.Layers[1].Digest.String()) || !errors.Is(err, cache.ErrDigestMismatch) {
			t.Errorf("err = %v, want a digest mismatch naming layer %s", err, m.Layers[1].Digest)
		}
	})
	t.Run("index replaced", func(t *testing.T) {
		// An index blob that lists the same manifests but is not the pinned bytes.
		ip := blob(d)
		orig, _ := os.ReadFile(ip)
		defer os.WriteFile(ip, orig, 0o644)
		os.WriteFile(ip, append(orig, '\n'), 0o644)
		_, err := newTestEnv(t).Materialize(context.Background(), u, Pin{URI: raw, Digest: u.Digest})
		if err == nil || !strings.Contains(err.Error(), "holds content with digest") || !strings.Contains(err.Error(), raw) {
			t.Errorf("err = %v, want the index digest mismatch", err)
		}
	})
}
