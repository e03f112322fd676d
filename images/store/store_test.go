package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/layers/testenv"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testConfig(version string, epoch int64) manifest.Config {
	return manifest.Config{
		SchemaVersion:   manifest.SchemaVersion,
		Name:            "node",
		Version:         version,
		SpecDigest:      digest.FromString("spec " + version),
		Kubernetes:      "1.21.13",
		Kernel:          "6.1.0-56-cloud-amd64",
		Imgctl:          "test",
		SourceDateEpoch: epoch,
		Layers:          []manifest.Layer{{Role: "base", Digest: digest.FromString("base"), Size: 4}},
		Rootfs:          manifest.Rootfs{Digest: digest.FromString("rootfs " + version), Size: 10, Entries: 1},
	}
}

// putArtifact stores content as a blob and returns its artifact.
func putArtifact(t testing.TB, s *Store, name, mediaType string, content []byte) manifest.Artifact {
	t.Helper()
	d, n, err := s.WriteBlob(context.Background(), bytes.NewReader(content), int64(len(content)), "")
	if err != nil {
		t.Fatal(err)
	}
	return manifest.Artifact{Name: name, MediaType: mediaType, Digest: d, Size: n}
}

// putTestImage stores a small image whose content derives from version.
func putTestImage(t testing.TB, s *Store, version string, epoch int64) ocispec.Descriptor {
	t.Helper()
	a := putArtifact(t, s, "rootfs.tar", manifest.RootfsMediaType, []byte("rootfs of "+version))
	desc, err := s.PutImage(context.Background(), testConfig(version, epoch), []manifest.Artifact{a})
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

func ingestEntries(t *testing.T, s *Store) []string {
	t.Helper()
	es, err := os.ReadDir(s.path(ingestDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func mustVerifyClean(t *testing.T, s *Store) {
	t.Helper()
	problems, err := s.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("Verify found problems: %v", problems)
	}
}

func TestOpen(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string // error substring; "" = opens
	}{
		{"missing dir", func(*testing.T, string) {}, ""},
		{"empty dir", func(t *testing.T, dir string) { mkdir(t, dir) }, ""},
		{"existing layout", func(t *testing.T, dir string) {
			if _, err := Open(t.Context(), dir, nil); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"foreign layout without our dirs", func(t *testing.T, dir string) {
			mkdir(t, filepath.Join(dir, "blobs", "sha256"))
			write(t, filepath.Join(dir, "oci-layout"), `{"imageLayoutVersion":"1.0.0"}`)
			write(t, filepath.Join(dir, "index.json"), `{"schemaVersion":2,"manifests":[]}`)
		}, ""},
		{"not a layout", func(t *testing.T, dir string) {
			mkdir(t, dir)
			write(t, filepath.Join(dir, "notes.txt"), "hello")
		}, `not an OCI image layout: it has no oci-layout file and is not empty (it holds "notes.txt")`},
		{"a file", func(t *testing.T, dir string) { write(t, dir, "x") }, "is not a directory"},
		{"bad oci-layout", func(t *testing.T, dir string) {
			mkdir(t, dir)
			write(t, filepath.Join(dir, "oci-layout"), `nope`)
		}, "not an OCI image layout: oci-layout"},
		{"future layout version", func(t *testing.T, dir string) {
			mkdir(t, dir)
			write(t, filepath.Join(dir, "oci-layout"), `{"imageLayoutVersion":"2.0.0"}`)
		}, `unsupported imageLayoutVersion "2.0.0"`},
		{"corrupt index", func(t *testing.T, dir string) {
			if _, err := Open(t.Context(), dir, nil); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, "index.json"), `{"schemaVersion":2,`)
		}, "reading index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			tt.setup(t, dir)
			s, err := Open(t.Context(), dir, nil)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Open = %v, want error containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Dir() != dir {
				t.Errorf("Dir() = %q", s.Dir())
			}
			data, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
			if err != nil || string(data) != `{"imageLayoutVersion":"1.0.0"}` {
				t.Errorf("oci-layout = %q, %v", data, err)
			}
			imgs, err := s.List(t.Context())
			if err != nil || len(imgs) != 0 {
				t.Errorf("List = %v, %v", imgs, err)
			}
			mustVerifyClean(t, s)
		})
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBlobWriterCommit(t *testing.T) {
	content := []byte("hello, blob")
	d := digest.FromBytes(content)
	n := int64(len(content))
	tests := []struct {
		name    string
		size    int64
		want    digest.Digest
		wantErr error
	}{
		{"compute", -1, "", nil},
		{"size only", n, "", nil},
		{"size and digest", n, d, nil},
		{"digest only", -1, d, nil},
		{"short", n + 1, "", ErrDigestMismatch},
		{"long", n - 1, d, ErrDigestMismatch},
		{"wrong digest", n, digest.FromString("other"), ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			w, err := s.NewBlobWriter(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(content); err != nil {
				t.Fatal(err)
			}
			got, gotN, err := w.Commit(t.Context(), tt.size, tt.want)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Commit = %v, want %v", err, tt.wantErr)
				}
				if s.HasBlob(d) {
					t.Error("rejected blob is visible")
				}
			} else {
				if err != nil || got != d || gotN != n {
					t.Fatalf("Commit = %s %d %v", got, gotN, err)
				}
				if !s.HasBlob(d) {
					t.Error("committed blob not visible")
				}
				if _, _, err := w.Commit(t.Context(), -1, ""); err == nil {
					t.Error("second Commit succeeded")
				}
			}
			if names := ingestEntries(t, s); len(names) != 0 {
				t.Errorf("temporary files left: %v", names)
			}
			mustVerifyClean(t, s)
		})
	}
}

func TestBlobWriterAbortAndDedupe(t *testing.T) {
	s := newStore(t)
	w, err := s.NewBlobWriter(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("partial"))
	w.Abort()
	w.Abort()
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Abort succeeded")
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Errorf("Abort left %v", names)
	}
	if s.HasBlob(digest.FromString("partial")) {
		t.Error("aborted blob visible")
	}
	// The same content twice: one blob, no error, no temp left.
	for range 2 {
		if _, _, err := s.WriteBlob(t.Context(), strings.NewReader("same"), -1, ""); err != nil {
			t.Fatal(err)
		}
	}
	w, _ = s.NewBlobWriter(t.Context())
	_, _ = w.Write([]byte("same"))
	if d, _, err := w.Commit(t.Context(), 4, digest.FromString("same")); err != nil || d != digest.FromString("same") {
		t.Fatal(d, err)
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Errorf("left %v", names)
	}
	// An unsupported algorithm is refused up front.
	if _, _, err := s.WriteBlob(t.Context(), strings.NewReader("x"), -1, digest.Digest("sha512:"+strings.Repeat("ab", 64))); err == nil {
		t.Error("sha512 accepted")
	}
}

func TestWriteBlobCancelled(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	r := io.MultiReader(strings.NewReader("first part "), readerFunc(func(p []byte) (int, error) {
		cancel()
		return copy(p, "more"), nil
	}), strings.NewReader("end"))
	if _, _, err := s.WriteBlob(ctx, r, -1, ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Errorf("left %v", names)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestLinkBlob(t *testing.T) {
	s := newStore(t)
	src := filepath.Join(filepath.Dir(s.Dir()), "cache-blob")
	write(t, src, "cached layer")
	d := digest.FromString("cached layer")

	if err := s.LinkBlob(t.Context(), src, digest.FromString("other")); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("wrong digest: %v", err)
	}
	if err := s.LinkBlob(t.Context(), src, d); err != nil {
		t.Fatal(err)
	}
	p, _ := s.blobPath(d)
	a, _ := os.Stat(src)
	b, _ := os.Stat(p)
	if !os.SameFile(a, b) {
		t.Error("same filesystem but not hard-linked")
	}
	if err := s.LinkBlob(t.Context(), src, d); err != nil {
		t.Fatalf("linking again: %v", err)
	}
	if err := s.LinkBlob(t.Context(), filepath.Join(t.TempDir(), "missing"), digest.FromString("nothing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Errorf("left %v", names)
	}
	mustVerifyClean(t, s)
}

func TestLinkBlobCopiesAcrossFilesystems(t *testing.T) {
	s := newStore(t)
	other, err := os.MkdirTemp("/dev/shm", "imgctl-test-")
	if err != nil {
		testenv.Missing(t, "no /dev/shm: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(other) })
	src := filepath.Join(other, "blob")
	write(t, src, "across")
	if err := os.Link(src, filepath.Join(s.Dir(), ingestDir, "probe")); err == nil {
		testenv.Missing(t, "/dev/shm is on the store's filesystem: no second filesystem to copy across")
	}
	_ = os.Remove(filepath.Join(s.Dir(), ingestDir, "probe"))
	d := digest.FromString("across")
	if err := s.LinkBlob(t.Context(), src, d); err != nil {
		t.Fatal(err)
	}
	if !s.HasBlob(d) {
		t.Fatal("blob not stored")
	}
	if err := s.LinkBlob(t.Context(), src, digest.FromString("x")); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("wrong digest by copy: %v", err)
	}
	mustVerifyClean(t, s)
}

func TestCorruptBlob(t *testing.T) {
	s := newStore(t)
	desc := putTestImage(t, s, "1.0.0", 100)
	img, err := s.Resolve(t.Context(), "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := img.Manifest.Layers[0].Digest
	// Flip bytes in place, same size, as a bad disk would.
	p, _ := s.blobPath(rootfs)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, p, strings.ToUpper("rootfs of 1.0.0"))

	rc, err := s.OpenBlob(t.Context(), rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("OpenBlob read = %v, want ErrDigestMismatch", err)
	}
	_ = rc.Close()

	problems, err := s.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || problems[0].Digest != rootfs || !strings.Contains(problems[0].Msg, "content hashes to") {
		t.Fatalf("problems = %v", problems)
	}

	// A missing blob referenced by a manifest, and a missing manifest.
	_ = os.Remove(p)
	mp, _ := s.blobPath(desc.Digest)
	problems, _ = s.Verify(t.Context())
	if len(problems) != 1 || problems[0].Digest != rootfs || !strings.Contains(problems[0].Msg, "missing") {
		t.Fatalf("problems = %v", problems)
	}
	_ = os.Remove(mp)
	write(t, filepath.Join(s.Dir(), "blobs", "sha256", "junk"), "x")
	problems, _ = s.Verify(t.Context())
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.String())
	}
	all := strings.Join(msgs, "\n")
	if len(problems) != 2 || !strings.Contains(all, "blob is missing") || !strings.Contains(all, "not a sha256 digest") {
		t.Fatalf("problems = %v", all)
	}
	if _, err := s.OpenBlob(t.Context(), desc.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenBlob of missing = %v", err)
	}
	if _, err := s.List(t.Context()); !errors.Is(err, ErrNotFound) {
		t.Errorf("List with a missing manifest = %v, want ErrNotFound", err)
	}
}

func TestPutImage(t *testing.T) {
	s := newStore(t)
	rootfs := putArtifact(t, s, "rootfs.tar", manifest.RootfsMediaType, []byte("rootfs"))
	kernel := putArtifact(t, s, "vmlinuz", manifest.KernelMediaType, []byte("kernel"))
	cfg := testConfig("1.21.13-6.1.0-56-20261126", 1795651200)

	missing := manifest.Artifact{Name: "disk.raw", MediaType: manifest.DiskRawMediaType, Digest: digest.FromString("nope"), Size: 4}
	if _, err := s.PutImage(t.Context(), cfg, []manifest.Artifact{rootfs, missing}); !errors.Is(err, ErrNotFound) ||
		!strings.Contains(err.Error(), `"disk.raw"`) {
		t.Errorf("missing artifact: %v", err)
	}
	wrongSize := kernel
	wrongSize.Size++
	if _, err := s.PutImage(t.Context(), cfg, []manifest.Artifact{wrongSize}); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("wrong size: %v", err)
	}
	bad := cfg
	bad.SchemaVersion = 7
	if _, err := s.PutImage(t.Context(), bad, nil); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("invalid config: %v", err)
	}

	desc, err := s.PutImage(t.Context(), cfg, []manifest.Artifact{rootfs, kernel})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Annotations[ocispec.AnnotationRefName] != cfg.Version || desc.Annotations["dev.imgctl.name"] != "node" ||
		desc.ArtifactType != manifest.ArtifactType || desc.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("descriptor = %+v", desc)
	}
	index1, _ := os.ReadFile(filepath.Join(s.Dir(), "index.json"))

	// Idempotent: same image again, one entry, index untouched.
	desc2, err := s.PutImage(t.Context(), cfg, []manifest.Artifact{rootfs, kernel})
	if err != nil || desc2.Digest != desc.Digest {
		t.Fatal(desc2, err)
	}
	index2, _ := os.ReadFile(filepath.Join(s.Dir(), "index.json"))
	if !bytes.Equal(index1, index2) {
		t.Error("index.json changed on an idempotent put")
	}

	// Deterministic: another store, same inputs, same manifest digest.
	s2 := newStore(t)
	putArtifact(t, s2, "x", "x", []byte("rootfs"))
	putArtifact(t, s2, "x", "x", []byte("kernel"))
	desc3, err := s2.PutImage(t.Context(), cfg, []manifest.Artifact{rootfs, kernel})
	if err != nil || desc3.Digest != desc.Digest {
		t.Fatalf("other store: %s vs %s (%v)", desc3.Digest, desc.Digest, err)
	}

	// A version names one image.
	if _, err := s.PutImage(t.Context(), cfg, []manifest.Artifact{rootfs}); !errors.Is(err, ErrConflict) {
		t.Errorf("reused version: %v", err)
	}

	var idx ocispec.Index
	if err := json.Unmarshal(index2, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index = %s (%v)", index2, err)
	}
	img, err := s.Resolve(t.Context(), desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if img.Config.Version != cfg.Version || len(img.Manifest.Layers) != 2 || img.Digest() != desc.Digest {
		t.Errorf("image = %+v", img)
	}
	mustVerifyClean(t, s)
}

func TestListAndResolve(t *testing.T) {
	s := newStore(t)
	byVersion := map[string]digest.Digest{}
	for i, v := range []string{"1.21.13-a", "1.21.13-b", "1.22.0-a", "1.22.0-b", "1.23.1"} {
		byVersion[v] = putTestImage(t, s, v, int64(1000+i/2*10)).Digest
	}
	imgs, err := s.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, img := range imgs {
		order = append(order, img.Config.Version)
	}
	if got, want := strings.Join(order, " "), "1.23.1 1.22.0-a 1.22.0-b 1.21.13-a 1.21.13-b"; got != want {
		t.Errorf("List order = %s, want %s", got, want)
	}

	d := byVersion["1.22.0-a"]
	tests := []struct {
		ref     string
		want    digest.Digest
		wantErr error
		msg     string
	}{
		{ref: d.String(), want: d},
		{ref: d.Encoded(), want: d},
		{ref: d.Encoded()[:12], want: d},
		{ref: "sha256:" + d.Encoded()[:8], want: d},
		{ref: "1.22.0-a", want: d},
		{ref: "1.23.1", want: byVersion["1.23.1"]},
		{ref: d.Encoded()[:3], wantErr: ErrNotFound, msg: "at least 4 hex digits"},
		{ref: digest.FromString("absent").String(), wantErr: ErrNotFound},
		{ref: "9.9.9", wantErr: ErrNotFound},
		{ref: "", wantErr: ErrNotFound},
		{ref: "sha256:zzzz", wantErr: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img, err := s.Resolve(t.Context(), tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("Resolve(%q) = %v, want %v containing %q", tt.ref, err, tt.wantErr, tt.msg)
				}
				return
			}
			if err != nil || img.Digest() != tt.want {
				t.Fatalf("Resolve(%q) = %s, %v; want %s", tt.ref, img.Digest(), err, tt.want)
			}
		})
	}
}

// TestResolveAmbiguous builds images until two manifest digests share a 4-digit prefix
// (a few hundred on average), so the ambiguous path is always exercised.
func TestResolveAmbiguous(t *testing.T) {
	if testing.Short() {
		t.Skip("slow under -short")
	}
	s := newStore(t)
	seen := map[string]string{}
	for i := 0; ; i++ {
		v := fmt.Sprintf("1.0.%d", i)
		d := putTestImage(t, s, v, 1).Digest.Encoded()[:4]
		if other, ok := seen[d]; ok {
			_, err := s.Resolve(t.Context(), d)
			if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), v) {
				t.Fatalf("Resolve(%q) = %v", d, err)
			}
			return
		}
		seen[d] = v
	}
}

func TestListSkipsForeignEntries(t *testing.T) {
	s := newStore(t)
	putTestImage(t, s, "1.0.0", 1)
	// A plain OCI image someone else put in the same layout.
	cd, cn, _ := s.WriteBlob(t.Context(), strings.NewReader(`{}`), -1, "")
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: cn}, Layers: []ocispec.Descriptor{}}
	m.SchemaVersion = 2
	mj, _ := json.Marshal(m)
	md, mn, _ := s.WriteBlob(t.Context(), bytes.NewReader(mj), -1, "")
	err := s.updateIndex(t.Context(), func(idx *ocispec.Index) (bool, error) {
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: mn})
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := s.List(t.Context())
	if err != nil || len(imgs) != 1 {
		t.Fatalf("List = %d images, %v", len(imgs), err)
	}
	mustVerifyClean(t, s)
}
