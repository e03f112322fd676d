package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/imgctl/imgctl/images/manifest"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// gcImage stores an image of version whose artifacts (f0, f1, …) hold contents.
func gcImage(t testing.TB, s *Store, version string, epoch int64, contents ...string) Image {
	t.Helper()
	var arts []manifest.Artifact
	for i, c := range contents {
		arts = append(arts, putArtifact(t, s, fmt.Sprintf("f%d", i), manifest.RootfsMediaType, []byte(c)))
	}
	desc, err := s.PutImage(context.Background(), testConfig(version, epoch), arts)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve(context.Background(), desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// blobsOf is an image's manifest, config and artifacts.
func blobsOf(img Image) []digest.Digest {
	out := []digest.Digest{img.Digest(), img.Manifest.Config.Digest}
	for _, l := range img.Manifest.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// gcPutBlob stores content as a blob of mediaType.
func gcPutBlob(t testing.TB, s *Store, mediaType string, content []byte) ocispec.Descriptor {
	t.Helper()
	d, n, err := s.WriteBlob(context.Background(), bytes.NewReader(content), int64(len(content)), "")
	if err != nil {
		t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: n}
}

// fastWriter writes blobs straight into blobs/sha256 without syncing, and collects index
// entries for flush: the property test builds hundreds of stores.
type fastWriter struct {
	testWriter
	flush func()
}

func newFastWriter(t testing.TB, s *Store) fastWriter {
	var entries []ocispec.Descriptor
	return fastWriter{
		testWriter: testWriter{
			blob: func(mt string, content []byte) ocispec.Descriptor {
				d := digest.FromBytes(content)
				p, _ := s.blobPath(d)
				if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
					if err := os.WriteFile(p, content, 0o444); err != nil {
						t.Fatal(err)
					}
				}
				return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(content))}
			},
			index: func(desc ocispec.Descriptor) { entries = append(entries, desc) },
		},
		flush: func() {
			idx := readIndexT(t, s)
			idx.Manifests = append(idx.Manifests, entries...)
			if err := s.writeIndex(idx); err != nil {
				t.Fatal(err)
			}
			entries = nil
		},
	}
}

// image stores and indexes an image as PutImage does.
func (fw fastWriter) image(t testing.TB, version string, epoch int64, contents ...string) Image {
	t.Helper()
	var arts []manifest.Artifact
	for i, c := range contents {
		d := fw.blob(manifest.RootfsMediaType, []byte(c))
		arts = append(arts, manifest.Artifact{Name: fmt.Sprintf("f%d", i), MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
	}
	cfg := testConfig(version, epoch)
	r, err := manifest.Render(cfg, arts)
	if err != nil {
		t.Fatal(err)
	}
	fw.blob(manifest.ConfigMediaType, r.ConfigJSON)
	fw.blob(ocispec.MediaTypeImageManifest, r.ManifestJSON)
	desc := r.ManifestDescriptor
	desc.Annotations = map[string]string{manifest.AnnotationRefName: cfg.Version, manifest.AnnotationName: cfg.Name}
	fw.index(desc)
	return Image{Descriptor: desc, Manifest: r.Manifest, Config: cfg}
}

// storedBlobs lists the sha256 blobs in the store.
func storedBlobs(t testing.TB, s *Store) []digest.Digest {
	t.Helper()
	es, err := os.ReadDir(s.path(blobsDir, "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var out []digest.Digest
	for _, e := range es {
		if d := digest.NewDigestFromEncoded(digest.SHA256, e.Name()); d.Validate() == nil {
			out = append(out, d)
		}
	}
	return out
}

// setMtime sets the modification time of blobs ds, or of every blob if none is given.
func setMtime(t testing.TB, s *Store, when time.Time, ds ...digest.Digest) {
	t.Helper()
	if len(ds) == 0 {
		ds = storedBlobs(t, s)
	}
	for _, d := range ds {
		p, _ := s.blobPath(d)
		if err := os.Chtimes(p, when, when); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// age makes blobs ds (or all of them) look last written the given time ago.
func age(t testing.TB, s *Store, ago time.Duration, ds ...digest.Digest) {
	t.Helper()
	setMtime(t, s, time.Now().Add(-ago), ds...)
}

func blobMtime(t testing.TB, s *Store, d digest.Digest) time.Time {
	t.Helper()
	p, _ := s.blobPath(d)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

func addIndexEntry(t testing.TB, s *Store, desc ocispec.Descriptor) {
	t.Helper()
	if err := s.updateIndex(context.Background(), func(idx *ocispec.Index) (bool, error) {
		idx.Manifests = append(idx.Manifests, desc)
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
}

func readIndexT(t testing.TB, s *Store) ocispec.Index {
	t.Helper()
	idx, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// putReferrer stores and indexes an OCI manifest whose subject is subject, as a signature tool
// would, and returns it with its blobs.
func putReferrer(t testing.TB, s *Store, subject ocispec.Descriptor, payload string) (ocispec.Descriptor, []digest.Digest) {
	t.Helper()
	return storeReferrer(t, storeWriter(t, s), subject, payload)
}

// testWriter is how test helpers store blobs and index entries: through the store's API
// (storeWriter) or fast (fastWriter).
type testWriter struct {
	blob  func(mediaType string, content []byte) ocispec.Descriptor
	index func(ocispec.Descriptor)
}

func storeWriter(t testing.TB, s *Store) testWriter {
	return testWriter{
		blob:  func(mt string, content []byte) ocispec.Descriptor { return gcPutBlob(t, s, mt, content) },
		index: func(desc ocispec.Descriptor) { addIndexEntry(t, s, desc) },
	}
}

func storeReferrer(t testing.TB, bw testWriter, subject ocispec.Descriptor, payload string) (ocispec.Descriptor, []digest.Digest) {
	t.Helper()
	empty := bw.blob(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	sig := bw.blob("application/vnd.example.signature", []byte(payload))
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature",
		Config:       empty,
		Layers:       []ocispec.Descriptor{sig},
		Subject:      &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	desc := bw.blob(ocispec.MediaTypeImageManifest, data)
	desc.ArtifactType = m.ArtifactType
	bw.index(desc)
	return desc, []digest.Digest{desc.Digest, empty.Digest, sig.Digest}
}

// putDockerImage stores and indexes a Docker schema 2 image with one layer.
func putDockerImage(t testing.TB, s *Store, name string, layer []byte) ocispec.Descriptor {
	t.Helper()
	return storeDockerImage(t, storeWriter(t, s), name, layer)
}

func storeDockerImage(t testing.TB, bw testWriter, name string, layer []byte) ocispec.Descriptor {
	t.Helper()
	cfg := bw.blob("application/vnd.docker.container.image.v1+json",
		fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","config":{"Labels":{"name":%q}}}`, name))
	l := bw.blob("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)
	data, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.docker.distribution.manifest.v2+json",
		"config":        cfg,
		"layers":        []ocispec.Descriptor{l},
	})
	if err != nil {
		t.Fatal(err)
	}
	desc := bw.blob("application/vnd.docker.distribution.manifest.v2+json", data)
	desc.Annotations = map[string]string{ocispec.AnnotationRefName: name}
	bw.index(desc)
	return desc
}

// reachable adds to out the blobs manifest d reaches, read independently of GC: config,
// layers, blobs and fsLayers are leaves; manifests and subject are followed.
func reachable(s *Store, d digest.Digest, out map[digest.Digest]bool) {
	if out[d] {
		return
	}
	out[d] = true
	p, err := s.blobPath(d)
	if err != nil {
		return
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return // missing: the caller checks presence
	}
	var m struct {
		Config    *ocispec.Descriptor
		Layers    []ocispec.Descriptor
		Blobs     []ocispec.Descriptor
		Manifests []ocispec.Descriptor
		Subject   *ocispec.Descriptor
		FSLayers  []struct{ BlobSum digest.Digest }
	}
	if json.Unmarshal(data, &m) != nil {
		return
	}
	if m.Config != nil {
		out[m.Config.Digest] = true
	}
	for _, l := range append(m.Layers, m.Blobs...) {
		out[l.Digest] = true
	}
	for _, l := range m.FSLayers {
		out[l.BlobSum] = true
	}
	for _, c := range m.Manifests {
		reachable(s, c.Digest, out)
	}
	if m.Subject != nil {
		reachable(s, m.Subject.Digest, out)
	}
}

// liveBlobs is everything index.json and the roots present in the store reach.
func liveBlobs(t testing.TB, s *Store, roots []digest.Digest) map[digest.Digest]bool {
	t.Helper()
	live := map[digest.Digest]bool{}
	for _, m := range readIndexT(t, s).Manifests {
		reachable(s, m.Digest, live)
	}
	for _, r := range roots {
		if s.HasBlob(r) {
			reachable(s, r, live)
		}
	}
	return live
}

// checkAfterGC checks what must hold after any GC: everything index.json and the roots reach
// is stored and sound (Verify is clean), and every other blob was modified at or after young.
func checkAfterGC(t *testing.T, s *Store, roots []digest.Digest, young time.Time) {
	t.Helper()
	live := liveBlobs(t, s, roots)
	for d := range live {
		if !s.HasBlob(d) {
			t.Errorf("reachable blob %s is gone", d)
		}
	}
	for _, d := range storedBlobs(t, s) {
		if !live[d] && blobMtime(t, s, d).Before(young) {
			t.Errorf("unreachable old blob %s was not collected", d)
		}
	}
	mustVerifyClean(t, s)
}

func versions(imgs []Image) []string {
	out := []string{}
	for _, img := range imgs {
		out = append(out, img.Config.Version)
	}
	return out
}

func sortedSet(ds []digest.Digest) []digest.Digest {
	out := slices.Clone(ds)
	slices.Sort(out)
	return slices.Compact(out)
}

func TestGC(t *testing.T) {
	const old = 2 * time.Hour
	type want struct {
		deleted   []string        // versions deleted, in List order
		kept      []string        // versions left, in List order
		gone      []digest.Digest // exactly the blobs GC removes
		stay      []digest.Digest
		referrers int      // referrer entries removed
		young     int      // unreferenced blobs spared for their age
		files     []string // files GC must leave alone
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, s *Store) (GCOptions, want)
	}{
		{"unreferenced image goes with its blobs", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1", "kernel v1")
			v2 := gcImage(t, s, "v2", 200, "rootfs v2")
			age(t, s, old)
			return GCOptions{Roots: []digest.Digest{v2.Digest()}},
				want{deleted: []string{"v1"}, kept: []string{"v2"}, gone: blobsOf(v1), stay: blobsOf(v2)}
		}},
		{"roots stay", func(t *testing.T, s *Store) (GCOptions, want) {
			var roots []digest.Digest
			for i := range 3 {
				roots = append(roots, gcImage(t, s, fmt.Sprint("v", i), int64(i), fmt.Sprint("rootfs ", i)).Digest())
			}
			age(t, s, old)
			return GCOptions{Roots: roots}, want{kept: []string{"v2", "v1", "v0"}}
		}},
		{"keep newest", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1")
			gcImage(t, s, "v2", 200, "rootfs v2")
			gcImage(t, s, "v3", 300, "rootfs v3")
			v4 := gcImage(t, s, "v4", 400, "rootfs v4")
			age(t, s, old)
			return GCOptions{Roots: []digest.Digest{v4.Digest()}, KeepNewest: 2},
				want{deleted: []string{"v1"}, kept: []string{"v4", "v3", "v2"}, gone: blobsOf(v1)}
		}},
		{"keep newest breaks ties by version", func(t *testing.T, s *Store) (GCOptions, want) {
			b := gcImage(t, s, "b", 100, "rootfs b")
			gcImage(t, s, "a", 100, "rootfs a")
			c := gcImage(t, s, "c", 100, "rootfs c")
			age(t, s, old)
			return GCOptions{KeepNewest: 1},
				want{deleted: []string{"b", "c"}, kept: []string{"a"}, gone: append(blobsOf(b), blobsOf(c)...)}
		}},
		{"older than", func(t *testing.T, s *Store) (GCOptions, want) {
			now := time.Now()
			day := int64(24 * 3600)
			ancient := gcImage(t, s, "ancient", now.Unix()-10*day, "rootfs ancient")
			gcImage(t, s, "recent", now.Unix()-3600, "rootfs recent")
			// An old commit rebuilt three hours ago: its SourceDateEpoch is old, its storing is not.
			rebuilt := gcImage(t, s, "rebuilt", now.Unix()-10*day, "rootfs rebuilt")
			age(t, s, 48*time.Hour)
			age(t, s, 3*time.Hour, blobsOf(rebuilt)...)
			return GCOptions{OlderThan: 24 * time.Hour, Now: func() time.Time { return now }},
				want{deleted: []string{"ancient"}, kept: []string{"recent", "rebuilt"}, gone: blobsOf(ancient)}
		}},
		{"without OlderThan a fresh image goes too, its blobs after the grace period", func(t *testing.T, s *Store) (GCOptions, want) {
			fresh := gcImage(t, s, "fresh", 1, "rootfs fresh")
			return GCOptions{}, want{deleted: []string{"fresh"}, stay: blobsOf(fresh), young: 3}
		}},
		{"a blob shared with a kept image stays", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "shared kernel", "rootfs v1")
			v2 := gcImage(t, s, "v2", 200, "shared kernel", "rootfs v2")
			age(t, s, old)
			return GCOptions{Roots: []digest.Digest{v2.Digest()}},
				want{deleted: []string{"v1"}, kept: []string{"v2"}, gone: []digest.Digest{v1.Digest(), v1.Manifest.Config.Digest, v1.Manifest.Layers[1].Digest},
					stay: blobsOf(v2)}
		}},
		{"a young unindexed blob stays, an old one goes", func(t *testing.T, s *Store) (GCOptions, want) {
			dead := gcPutBlob(t, s, "", []byte("left by a build that died"))
			age(t, s, old)
			building := gcPutBlob(t, s, "", []byte("written by a build that has not indexed its image yet"))
			return GCOptions{}, want{gone: []digest.Digest{dead.Digest}, stay: []digest.Digest{building.Digest}, young: 1}
		}},
		{"blobs a running build reuses stay", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "kernel", "rootfs v1")
			cached := filepath.Join(t.TempDir(), "cached")
			if err := os.WriteFile(cached, []byte("a cached layer"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(cached, time.Now().Add(-old), time.Now().Add(-old)); err != nil {
				t.Fatal(err)
			}
			age(t, s, old)
			// The build: a kernel identical to v1's (deduplicated), a layer hard-linked from
			// its cache, and v1's rootfs found with HasBlob and reused.
			kernel := gcPutBlob(t, s, "", []byte("kernel"))
			layer, _, err := s.AddFile(t.Context(), cached)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.TouchBlob(v1.Manifest.Layers[1].Digest); err != nil {
				t.Fatal(err)
			}
			return GCOptions{}, want{deleted: []string{"v1"}, gone: []digest.Digest{v1.Digest(), v1.Manifest.Config.Digest},
				stay: []digest.Digest{kernel.Digest, layer, v1.Manifest.Layers[1].Digest}, young: 3}
		}},
		{"entries of other tools and all they reference stay", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1")
			lp, err := layout.FromPath(s.Dir())
			if err != nil {
				t.Fatal(err)
			}
			gi, err := random.Image(64, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := lp.AppendImage(gi); err != nil {
				t.Fatal(err)
			}
			gidx, err := random.Index(32, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := lp.AppendIndex(gidx); err != nil {
				t.Fatal(err)
			}
			putDockerImage(t, s, "busybox", []byte("rootfs v1")) // shares a layer with v1
			age(t, s, old)
			var foreign []digest.Digest
			live := map[digest.Digest]bool{}
			for _, m := range readIndexT(t, s).Manifests {
				if m.Digest != v1.Digest() {
					reachable(s, m.Digest, live)
				}
			}
			for d := range live {
				foreign = append(foreign, d)
			}
			if len(foreign) < 12 {
				t.Fatalf("other tools' entries reach %d blobs", len(foreign))
			}
			return GCOptions{}, want{deleted: []string{"v1"}, gone: []digest.Digest{v1.Digest(), v1.Manifest.Config.Digest}, stay: foreign}
		}},
		{"a referrer of a kept image stays", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1")
			_, sig := putReferrer(t, s, v1.Descriptor, "signature of v1")
			age(t, s, old)
			return GCOptions{Roots: []digest.Digest{v1.Digest()}}, want{kept: []string{"v1"}, stay: append(sig, blobsOf(v1)...)}
		}},
		{"referrers of a deleted image go with it", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1")
			sigDesc, sig := putReferrer(t, s, v1.Descriptor, "signature of v1")
			_, sigsig := putReferrer(t, s, sigDesc, "signature of the signature")
			age(t, s, old)
			return GCOptions{}, want{deleted: []string{"v1"}, gone: slices.Concat(blobsOf(v1), sig, sigsig), referrers: 2}
		}},
		{"a root missing from the index keeps its blobs", func(t *testing.T, s *Store) (GCOptions, want) {
			v1 := gcImage(t, s, "v1", 100, "rootfs v1")
			v2 := gcImage(t, s, "v2", 200, "rootfs v2")
			if err := s.updateIndex(t.Context(), func(idx *ocispec.Index) (bool, error) {
				// Not emptied: an empty index with old manifests in blobs/ is a lost index.
				idx.Manifests = slices.DeleteFunc(idx.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == v1.Digest() })
				return true, nil
			}); err != nil {
				t.Fatal(err)
			}
			age(t, s, old)
			return GCOptions{Roots: []digest.Digest{v1.Digest(), v2.Digest(), digest.FromString("not in the store")}},
				want{stay: append(blobsOf(v1), blobsOf(v2)...), kept: []string{"v2"}}
		}},
		{"ingest and stray files are left alone", func(t *testing.T, s *Store) (GCOptions, want) {
			stray := s.path(blobsDir, "sha256", "0123abc.tmp")
			write(t, stray, "another tool's temporary file")
			write(t, s.path(ingestDir, "blob-123"), "a blob being written")
			age(t, s, old)
			if err := os.Chtimes(stray, time.Now().Add(-old), time.Now().Add(-old)); err != nil {
				t.Fatal(err)
			}
			return GCOptions{}, want{files: []string{stray, s.path(ingestDir, "blob-123")}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			o, w := tc.setup(t, s)
			w.gone = sortedSet(w.gone)
			var freed int64
			for _, d := range w.gone {
				n, err := s.blobSize(d)
				if err != nil {
					t.Fatalf("blob %s to be collected: %v", d, err)
				}
				freed += n
			}

			rep, err := s.GC(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			if got := versions(rep.DeletedImages); !slices.Equal(got, w.deleted) {
				t.Errorf("deleted images %v, want %v", got, w.deleted)
			}
			imgs, err := s.List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := versions(imgs); !slices.Equal(got, w.kept) {
				t.Errorf("images left %v, want %v", got, w.kept)
			}
			if rep.KeptImages != len(w.kept) {
				t.Errorf("KeptImages = %d, want %d", rep.KeptImages, len(w.kept))
			}
			if !slices.Equal(rep.DeletedBlobs, w.gone) {
				t.Errorf("deleted blobs\n%v\nwant\n%v", rep.DeletedBlobs, w.gone)
			}
			if rep.FreedBytes != freed {
				t.Errorf("FreedBytes = %d, want %d", rep.FreedBytes, freed)
			}
			for _, d := range w.gone {
				if s.HasBlob(d) {
					t.Errorf("blob %s is still there", d)
				}
			}
			for _, d := range w.stay {
				if !s.HasBlob(d) {
					t.Errorf("blob %s was deleted", d)
				}
			}
			if len(rep.DeletedReferrers) != w.referrers {
				t.Errorf("deleted referrers %v, want %d", rep.DeletedReferrers, w.referrers)
			}
			if rep.YoungBlobs != w.young {
				t.Errorf("YoungBlobs = %d, want %d", rep.YoungBlobs, w.young)
			}
			for _, p := range w.files {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("GC removed %s: %v", p, err)
				}
				_ = os.Remove(p) // for Verify
			}
			checkAfterGC(t, s, o.Roots, time.Now().Add(-gcGrace))

			// Nothing is left to collect.
			again, err := s.GC(t.Context(), o)
			if err != nil || len(again.DeletedImages)+len(again.DeletedBlobs)+len(again.DeletedReferrers) > 0 {
				t.Errorf("second GC = %+v, %v", again, err)
			}
		})
	}
}

// snapshot is index.json and every blob's mtime.
func snapshot(t testing.TB, s *Store) (string, map[digest.Digest]time.Time) {
	t.Helper()
	idx, err := os.ReadFile(s.path(indexFile))
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest]time.Time{}
	for _, d := range storedBlobs(t, s) {
		blobs[d] = blobMtime(t, s, d)
	}
	return string(idx), blobs
}

// digestsOf is the digests of images, for comparing reports.
func digestsOf(imgs []Image) []digest.Digest {
	var out []digest.Digest
	for _, img := range imgs {
		out = append(out, img.Digest())
	}
	return out
}

func sameReport(a, b GCReport) bool {
	return slices.Equal(digestsOf(a.DeletedImages), digestsOf(b.DeletedImages)) &&
		slices.EqualFunc(a.DeletedReferrers, b.DeletedReferrers, func(x, y ocispec.Descriptor) bool { return x.Digest == y.Digest }) &&
		slices.Equal(a.DeletedBlobs, b.DeletedBlobs) &&
		a.FreedBytes == b.FreedBytes && a.KeptImages == b.KeptImages && a.YoungBlobs == b.YoungBlobs
}

func TestGCDryRun(t *testing.T) {
	s := newStore(t)
	v1 := gcImage(t, s, "v1", 100, "shared", "rootfs v1")
	v2 := gcImage(t, s, "v2", 200, "shared", "rootfs v2")
	gcImage(t, s, "v3", 300, "rootfs v3")
	putReferrer(t, s, v1.Descriptor, "signature of v1")
	putReferrer(t, s, v2.Descriptor, "signature of v2")
	putDockerImage(t, s, "other", []byte("rootfs v1"))
	gcPutBlob(t, s, "", []byte("orphan"))
	age(t, s, 2*time.Hour)
	gcPutBlob(t, s, "", []byte("young orphan"))
	o := GCOptions{Roots: []digest.Digest{v2.Digest()}, DryRun: true}

	idx0, blobs0 := snapshot(t, s)
	dry, err := s.GC(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	idx1, blobs1 := snapshot(t, s)
	if idx0 != idx1 || !maps.Equal(blobs0, blobs1) {
		t.Fatal("a dry run changed the store")
	}
	if len(dry.DeletedImages) != 2 || len(dry.DeletedReferrers) != 1 || len(dry.DeletedBlobs) != 8 || dry.YoungBlobs != 1 {
		t.Errorf("dry run = %+v", dry)
	}
	o.DryRun = false
	real, err := s.GC(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !sameReport(dry, real) {
		t.Errorf("dry run reported\n%+v\nthe real one\n%+v", dry, real)
	}
	checkAfterGC(t, s, o.Roots, time.Now().Add(-gcGrace))
}

func TestGCCorruptOrMissingManifest(t *testing.T) {
	s := newStore(t)
	v1 := gcImage(t, s, "v1", 100, "rootfs v1")
	other := putDockerImage(t, s, "other", []byte("layer"))
	orphan := gcPutBlob(t, s, "", []byte("orphan"))
	age(t, s, 2*time.Hour)
	p, _ := s.blobPath(other.Digest)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, p, `{"schemaVersion":2,"layers":[]}`)
	index0, blobs0 := snapshot(t, s)

	// Corrupt: GC cannot know what the manifest referenced, so it deletes nothing.
	if _, err := s.GC(t.Context(), GCOptions{}); err == nil || !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("GC with a corrupt manifest: %v", err)
	}
	if index1, blobs1 := snapshot(t, s); index0 != index1 || len(blobs0) != len(blobs1) {
		t.Fatal("GC changed the store though a manifest is corrupt")
	}

	// Missing: GC goes on (logging it); the entry stays, as other tools' entries do.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GC(t.Context(), GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(digestsOf(rep.DeletedImages), []digest.Digest{v1.Digest()}) || s.HasBlob(orphan.Digest) {
		t.Errorf("report %+v", rep)
	}
	if idx := readIndexT(t, s); len(idx.Manifests) != 1 || idx.Manifests[0].Digest != other.Digest {
		t.Errorf("index = %+v", idx.Manifests)
	}
}

func TestGCRejectsBadOptionsAndHonoursContext(t *testing.T) {
	s := newStore(t)
	gcImage(t, s, "v1", 100, "rootfs v1")
	age(t, s, 2*time.Hour)
	index0, _ := snapshot(t, s)
	for _, o := range []GCOptions{{KeepNewest: -1}, {OlderThan: -time.Hour}, {Roots: []digest.Digest{"sha256:nope"}}} {
		if _, err := s.GC(t.Context(), o); err == nil {
			t.Errorf("GC(%+v) accepted", o)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.GC(ctx, GCOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled GC: %v", err)
	}
	if index1, _ := snapshot(t, s); index0 != index1 {
		t.Error("a failed GC changed the index")
	}
}

func TestTouchBlob(t *testing.T) {
	s := newStore(t)
	if err := s.TouchBlob(digest.FromString("absent")); !errors.Is(err, ErrNotFound) {
		t.Errorf("TouchBlob of a missing blob: %v", err)
	}
	b := gcPutBlob(t, s, "", []byte("content"))
	age(t, s, 2*time.Hour)
	if err := s.TouchBlob(b.Digest); err != nil {
		t.Fatal(err)
	}
	if m := blobMtime(t, s, b.Digest); time.Since(m) > time.Minute {
		t.Errorf("mtime %v after TouchBlob", m)
	}
	// Reusing an existing blob touches it too, whichever way it is written.
	for _, reuse := range []func() error{
		func() error {
			_, _, err := s.WriteBlob(t.Context(), bytes.NewReader([]byte("content")), 7, b.Digest)
			return err
		},
		func() error {
			_, _, err := s.WriteBlob(t.Context(), bytes.NewReader([]byte("content")), -1, "")
			return err
		},
		func() error {
			p := filepath.Join(t.TempDir(), "f")
			write(t, p, "content")
			return s.LinkBlob(t.Context(), p, b.Digest)
		},
	} {
		age(t, s, 2*time.Hour, b.Digest)
		if err := reuse(); err != nil {
			t.Fatal(err)
		}
		if m := blobMtime(t, s, b.Digest); time.Since(m) > time.Minute {
			t.Errorf("mtime %v after reuse", m)
		}
	}
}

// TestGCRemoveBlobSparesBlobUsedMeanwhile: a writer may touch a blob between GC's scan and its
// removal; removeBlob checks after moving it away and puts it back.
func TestGCRemoveBlobSparesBlobUsedMeanwhile(t *testing.T) {
	s := newStore(t)
	b := gcPutBlob(t, s, "", []byte("reused"))
	young := time.Now().Add(-time.Hour)
	if removed, err := s.removeBlob(b.Digest, young); err != nil || removed || !s.HasBlob(b.Digest) {
		t.Fatalf("removeBlob of a young blob = %v, %v", removed, err)
	}
	age(t, s, 2*time.Hour)
	if removed, err := s.removeBlob(b.Digest, young); err != nil || !removed || s.HasBlob(b.Digest) {
		t.Fatalf("removeBlob of an old blob = %v, %v", removed, err)
	}
	if removed, err := s.removeBlob(b.Digest, young); err != nil || removed {
		t.Fatalf("removeBlob of a missing blob = %v, %v", removed, err)
	}
	if es := ingestEntries(t, s); len(es) != 0 {
		t.Errorf("ingest holds %v", es)
	}
}

func TestRootsFromHistories(t *testing.T) {
	a, b, c, d := digest.FromString("a"), digest.FromString("b"), digest.FromString("c"), digest.FromString("d")
	hs := []HistoryRefs{
		{Channel: "nightly", To: []digest.Digest{a, b, a, c, d}},
		{Channel: "prod", To: []digest.Digest{a}},
		{Channel: "empty"},
	}
	tests := []struct {
		keep int
		want []digest.Digest
	}{
		{0, []digest.Digest{a, d}},
		{1, []digest.Digest{a, c, d}},
		{2, []digest.Digest{a, c, d}}, // a again, not a third image
		{3, []digest.Digest{a, b, c, d}},
		{-1, []digest.Digest{a, b, c, d}},
	}
	for _, tc := range tests {
		got, err := RootsFromHistories(hs, tc.keep)
		if want := sortedSet(tc.want); err != nil || !slices.Equal(got, want) {
			t.Errorf("keep %d: %v, %v; want %v", tc.keep, got, err, want)
		}
	}
	if _, err := RootsFromHistories([]HistoryRefs{{Channel: "x", To: []digest.Digest{a, ""}}}, 0); err == nil {
		t.Error("an invalid history entry was accepted")
	}
}

// TestGCProperty builds random stores (images sharing random blobs, referrers, another tool's
// image, orphans, random ages) and random options, and checks after GC that exactly the images
// eligible under the options are gone, that everything index.json and the roots reach is there
// and sound, that every other blob is young, and that a dry run changes nothing and reports what
// the real run then does.
func TestGCProperty(t *testing.T) {
	n := 250
	if testing.Short() {
		n = 40
	}
	seed := uint64(1)
	if v := os.Getenv("IMGCTL_GC_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		if !t.Run(strconv.Itoa(i), func(t *testing.T) { gcProperty(t, rng) }) {
			t.Fatalf("failed with IMGCTL_GC_SEED=%d, iteration %d", seed, i)
		}
	}
}

func gcProperty(t *testing.T, rng *rand.Rand) {
	var err error
	s := newStore(t)
	fw := newFastWriter(t, s)
	now := time.Now()
	const day = 24 * time.Hour

	pool := make([]string, 2+rng.IntN(5))
	for i := range pool {
		pool[i] = fmt.Sprintf("blob %d %d", i, rng.Uint64())
	}
	var imgs []Image
	for i := range rng.IntN(7) {
		var contents []string
		for _, j := range rng.Perm(len(pool))[:1+rng.IntN(min(3, len(pool)))] {
			contents = append(contents, pool[j])
		}
		epoch := now.Add(-time.Duration(rng.IntN(4)) * day).Unix() // ties are likely
		imgs = append(imgs, fw.image(t, fmt.Sprintf("v%d", i), epoch, contents...))
	}
	for range rng.IntN(3) {
		fw.blob("", fmt.Appendf(nil, "orphan %d", rng.Uint64()))
	}
	if rng.IntN(3) == 0 {
		storeDockerImage(t, fw.testWriter, "other", []byte(pool[rng.IntN(len(pool))]))
	}
	type referrer struct{ desc, subject ocispec.Descriptor }
	var refs []referrer
	for range rng.IntN(3) {
		if len(imgs) == 0 {
			break
		}
		subject := imgs[rng.IntN(len(imgs))].Descriptor
		if len(refs) > 0 && rng.IntN(3) == 0 {
			subject = refs[rng.IntN(len(refs))].desc
		}
		desc, _ := storeReferrer(t, fw.testWriter, subject, fmt.Sprintf("signature %d", rng.Uint64()))
		refs = append(refs, referrer{desc, subject})
	}
	fw.flush()
	ages := []time.Duration{time.Minute, 2 * time.Hour, 50 * time.Hour, 30 * day}
	for _, d := range storedBlobs(t, s) {
		setMtime(t, s, now.Add(-ages[rng.IntN(len(ages))]), d)
	}

	o := GCOptions{
		KeepNewest: max(0, rng.IntN(6)-2),
		OlderThan:  []time.Duration{0, 0, time.Hour, 48 * time.Hour, 10 * day}[rng.IntN(5)],
		DryRun:     rng.IntN(4) == 0,
		Now:        func() time.Time { return now },
	}
	for _, img := range imgs {
		if rng.IntN(3) == 0 {
			o.Roots = append(o.Roots, img.Digest())
		}
	}
	for _, r := range refs {
		if rng.IntN(4) == 0 {
			o.Roots = append(o.Roots, r.desc.Digest)
		}
	}
	if rng.IntN(5) == 0 {
		o.Roots = append(o.Roots, digest.FromString("an image not in the store"))
	}

	// The oracle: which images and referrers are eligible.
	roots := map[digest.Digest]bool{}
	for _, r := range o.Roots {
		roots[r] = true
	}
	var cands []Image
	for _, img := range imgs {
		if !roots[img.Digest()] {
			cands = append(cands, img)
		}
	}
	slices.SortFunc(cands, func(a, b Image) int {
		return cmp.Or(-cmp.Compare(a.Config.SourceDateEpoch, b.Config.SourceDateEpoch),
			cmp.Compare(a.Config.Version, b.Config.Version), cmp.Compare(a.Digest(), b.Digest()))
	})
	wantGone := map[digest.Digest]bool{}
	var wantImages []digest.Digest
	for i, img := range cands {
		stored := blobMtime(t, s, img.Digest())
		cutoff := now.Add(-o.OlderThan)
		if i < o.KeepNewest || o.OlderThan > 0 && (!img.Config.Created().Before(cutoff) || !stored.Before(cutoff)) {
			continue
		}
		wantGone[img.Digest()] = true
		wantImages = append(wantImages, img.Digest())
	}
	var wantRefs []digest.Digest
	for more := true; more; {
		more = false
		for _, r := range refs {
			if d := r.desc.Digest; !wantGone[d] && !roots[d] && wantGone[r.subject.Digest] {
				wantGone[d], more = true, true
				wantRefs = append(wantRefs, d)
			}
		}
	}
	index0, blobs0 := snapshot(t, s)
	sizes := map[digest.Digest]int64{}
	for d := range blobs0 {
		if sizes[d], err = s.blobSize(d); err != nil {
			t.Fatal(err)
		}
	}

	rep, err := s.GC(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if got := digestsOf(rep.DeletedImages); !slices.Equal(sortedSet(got), sortedSet(wantImages)) {
		t.Errorf("options %+v: deleted images %v, want %v", o, got, wantImages)
	}
	var gotRefs []digest.Digest
	for _, r := range rep.DeletedReferrers {
		gotRefs = append(gotRefs, r.Digest)
	}
	if !slices.Equal(sortedSet(gotRefs), sortedSet(wantRefs)) {
		t.Errorf("deleted referrers %v, want %v", gotRefs, wantRefs)
	}
	if o.DryRun {
		if index1, blobs1 := snapshot(t, s); index0 != index1 || !maps.Equal(blobs0, blobs1) {
			t.Fatal("a dry run changed the store")
		}
		dry := rep
		o.DryRun = false
		if rep, err = s.GC(t.Context(), o); err != nil {
			t.Fatal(err)
		}
		if !sameReport(dry, rep) {
			t.Errorf("dry run reported\n%+v\nthe real one\n%+v", dry, rep)
		}
	}

	// index.json lost exactly the deleted entries.
	var idx0 ocispec.Index
	if err := json.Unmarshal([]byte(index0), &idx0); err != nil {
		t.Fatal(err)
	}
	var wantIndex []digest.Digest
	for _, m := range idx0.Manifests {
		if !wantGone[m.Digest] {
			wantIndex = append(wantIndex, m.Digest)
		}
	}
	var gotIndex []digest.Digest
	for _, m := range readIndexT(t, s).Manifests {
		gotIndex = append(gotIndex, m.Digest)
	}
	if !slices.Equal(gotIndex, wantIndex) {
		t.Errorf("index %v, want %v", gotIndex, wantIndex)
	}
	// The report names exactly the blobs that went.
	var gone []digest.Digest
	var freed int64
	_, blobs1 := snapshot(t, s)
	for d := range blobs0 {
		if _, ok := blobs1[d]; !ok {
			gone = append(gone, d)
			freed += sizes[d]
		}
	}
	slices.Sort(gone)
	if !slices.Equal(gone, rep.DeletedBlobs) {
		t.Errorf("blobs gone %v, reported %v", gone, rep.DeletedBlobs)
	}
	if freed != rep.FreedBytes {
		t.Errorf("FreedBytes = %d, the blobs gone hold %d", rep.FreedBytes, freed)
	}
	checkAfterGC(t, s, o.Roots, now.Add(-gcGrace))
}

// TestGCConcurrentPut runs GC again and again, with a short grace period, while goroutines
// build images (blobs first, some shared with images GC deletes, then PutImage). No put may
// fail, no indexed image may lose a blob, and every image stored is either still indexed or
// was reported deleted.
func TestGCConcurrentPut(t *testing.T) {
	const grace = time.Second
	s := newStore(t)
	// Old images sharing kernels with the new ones: GC deletes them while builds reuse their kernels.
	for i := range 4 {
		gcImage(t, s, fmt.Sprintf("old-%d", i), 1, fmt.Sprintf("kernel %d", i%3), fmt.Sprintf("rootfs old-%d", i))
	}
	age(t, s, 2*time.Hour)
	root := gcImage(t, s, "root", 1, "kernel 0", "rootfs root")

	ctx, stop := context.WithTimeout(t.Context(), 2500*time.Millisecond)
	defer stop()
	var (
		mu   sync.Mutex
		puts []string
		wg   sync.WaitGroup
	)
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				version := fmt.Sprintf("new-%d-%d", w, i)
				var arts []manifest.Artifact
				for name, content := range map[string]string{"vmlinuz": fmt.Sprintf("kernel %d", i%3), "rootfs.tar": "rootfs " + version} {
					d, n, err := s.WriteBlob(context.Background(), bytes.NewReader([]byte(content)), -1, "")
					if err != nil {
						t.Errorf("writing %s of %s: %v", name, version, err)
						return
					}
					arts = append(arts, manifest.Artifact{Name: name, MediaType: manifest.RootfsMediaType, Digest: d, Size: n})
				}
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // the rest of the build
				if _, err := s.PutImage(context.Background(), testConfig(version, int64(1000+2*i+w)), arts); err != nil {
					t.Errorf("PutImage %s: %v", version, err)
					return
				}
				mu.Lock()
				puts = append(puts, version)
				mu.Unlock()
			}
		})
	}
	deleted := map[string]bool{}
	var last time.Time
	gc := func() {
		rep, err := s.GC(context.Background(), GCOptions{Roots: []digest.Digest{root.Digest()}, KeepNewest: 4, grace: grace,
			Now: func() time.Time { last = time.Now(); return last }})
		if err != nil {
			t.Fatal(err)
		}
		// Only GC removes blobs, and it is not running: every indexed image must be whole.
		imgs, err := s.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, img := range imgs {
			for _, d := range blobsOf(img) {
				if !s.HasBlob(d) {
					t.Fatalf("image %s lost blob %s", img.Config.Version, d)
				}
			}
		}
		for _, img := range rep.DeletedImages {
			if deleted[img.Config.Version] {
				t.Errorf("image %s deleted twice", img.Config.Version)
			}
			deleted[img.Config.Version] = true
		}
	}
	for ctx.Err() == nil {
		gc()
		time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
	}
	wg.Wait()
	gc()

	imgs, err := s.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, img := range imgs {
		have[img.Config.Version] = true
	}
	if !have["root"] {
		t.Error("the root was deleted")
	}
	for _, v := range puts {
		if have[v] == deleted[v] {
			t.Errorf("image %s: indexed %v, reported deleted %v", v, have[v], deleted[v])
		}
	}
	if len(deleted) < 10 || len(puts) < 10 {
		t.Errorf("the test did not exercise much: %d puts, %d deleted", len(puts), len(deleted))
	}
	t.Logf("%d puts, %d images deleted, %d left", len(puts), len(deleted), len(imgs))
	checkAfterGC(t, s, []digest.Digest{root.Digest()}, last.Add(-grace))
}
