package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// testRegistry is go-containerregistry's registry on loopback, recording every request and
// letting a test rewrite responses.
type testRegistry struct {
	host string // 127.0.0.1:PORT
	mu   sync.Mutex
	reqs []string // "METHOD PATH"
	// hook, if set, may serve a request itself (returning true); next serves it normally.
	hook func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
}

func newRegistry(t *testing.T, opts ...ggcrregistry.Option) *testRegistry {
	t.Helper()
	reg := ggcrregistry.New(append([]ggcrregistry.Option{ggcrregistry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	tr := &testRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.reqs = append(tr.reqs, r.Method+" "+r.URL.Path)
		hook := tr.hook
		tr.mu.Unlock()
		if hook != nil && hook(w, r, reg) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *testRegistry) setHook(h func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.hook = h
}

// take returns the requests recorded since the last take.
func (tr *testRegistry) take() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	r := tr.reqs
	tr.reqs = nil
	return r
}

// writes are the requests among reqs that change the registry.
func writes(reqs []string) []string {
	var out []string
	for _, r := range reqs {
		if !strings.HasPrefix(r, "GET ") && !strings.HasPrefix(r, "HEAD ") {
			out = append(out, r)
		}
	}
	return out
}

func count(reqs []string, prefix string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func testOptions(t *testing.T) Options {
	return Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

const testVersion = "1.21.13-6.1.0+b5" // '+' is not allowed in a tag

func TestTag(t *testing.T) {
	for in, want := range map[string]string{
		"1.21.13-6.1.0-56-20261126": "1.21.13-6.1.0-56-20261126",
		"1.21.13+b5":                "1.21.13_b5",
		"1.0.0+a+b":                 "1.0.0_a_b",
		".x":                        "_x",
		strings.Repeat("a", 130):    strings.Repeat("a", 128),
	} {
		if got := Tag(in); got != want || !tagRE.MatchString(got) {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestInsecureDefault(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost:5000": true, "localhost": true, "127.0.0.1:5000": true, "127.8.9.1": true,
		"[::1]:5000": true, "::1": true, "10.0.0.1:5000": false, "192.168.1.2": false,
		"registry.local:5000": false, "ghcr.io": false, "127.0.0.1.nip.io": false,
	} {
		if got := (Options{}).insecure(host); got != want {
			t.Errorf("insecure(%q) = %v, want %v", host, got, want)
		}
		if !(Options{Insecure: true}).insecure(host) {
			t.Errorf("Insecure: true does not make %q insecure", host)
		}
	}
}

func TestSchemeGuard(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/", nil)
	if _, err := (schemeGuard{base: http.DefaultTransport}).RoundTrip(req); !errors.Is(err, ErrPlainHTTP) {
		t.Errorf("plain HTTP without Insecure: err = %v", err)
	}
	resp, err := (schemeGuard{base: http.DefaultTransport, allowHTTP: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	// The guard is wired in: a private-address registry is not reached over plain HTTP, though
	// go-containerregistry would fall back to it for RFC 1918 addresses.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err = Pull(ctx, storetest.Open(t), "10.0.0.1:5000/x:y", Options{})
	if err == nil || !strings.Contains(err.Error(), ErrPlainHTTP.Error()) {
		t.Errorf("Pull from a private address without Insecure: %v", err)
	}
	t.Logf("error: %v", err)
}

// pushed holds an image pushed to a test registry.
type pushed struct {
	reg  *testRegistry
	src  *store.Store
	img  store.Image
	repo string
	ref  name.Digest
}

func pushOne(t *testing.T) pushed {
	t.Helper()
	reg := newRegistry(t)
	src := storetest.Open(t)
	img := storetest.PutVersion(t, src, testVersion, 1795651200)
	repo := reg.host + "/imgctl/node"
	ref, err := Push(t.Context(), src, img, repo, testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	return pushed{reg: reg, src: src, img: img, repo: repo, ref: ref}
}

func TestPushPull(t *testing.T) {
	p := pushOne(t)
	if p.ref.DigestStr() != p.img.Digest().String() || p.ref.Context().String() != p.repo {
		t.Errorf("Push returned %s, want %s@%s", p.ref, p.repo, p.img.Digest())
	}
	reqs := p.reg.take()
	// config + 3 artifacts, each one upload; one manifest under the sanitized tag.
	if n := count(reqs, "POST /v2/imgctl/node/blobs/uploads/"); n != 4 {
		t.Errorf("%d blob uploads, want 4: %q", n, reqs)
	}
	if n := count(reqs, "PUT /v2/imgctl/node/manifests/1.21.13-6.1.0_b5"); n != 1 {
		t.Errorf("%d manifest PUTs under the tag: %q", n, reqs)
	}

	// The registry serves the store's manifest bytes unchanged.
	tagRef, err := name.ParseReference(p.repo + ":" + Tag(testVersion))
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(tagRef)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := readStoreBlob(t.Context(), p.src, p.img.Descriptor)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(desc.Manifest, raw) || desc.Digest.String() != p.img.Digest().String() {
		t.Errorf("registry manifest %s differs from the store's %s", desc.Digest, p.img.Digest())
	}

	for _, ref := range []string{tagRef.String(), p.ref.String()} {
		dst := storetest.Open(t)
		got, err := Pull(t.Context(), dst, ref, testOptions(t))
		if err != nil {
			t.Fatalf("Pull(%s): %v", ref, err)
		}
		if got.Digest() != p.img.Digest() {
			t.Errorf("Pull(%s) digest %s, want %s", ref, got.Digest(), p.img.Digest())
		}
		if !reflect.DeepEqual(got.Config, p.img.Config) {
			t.Errorf("Pull(%s) config %+v, want %+v", ref, got.Config, p.img.Config)
		}
		if !reflect.DeepEqual(got.Descriptor, p.img.Descriptor) {
			t.Errorf("Pull(%s) index entry %+v, want the one PutImage writes: %+v", ref, got.Descriptor, p.img.Descriptor)
		}
		if problems, err := dst.Verify(t.Context()); err != nil || len(problems) != 0 {
			t.Errorf("Verify after Pull(%s) = %v, %v", ref, problems, err)
		}
		if byVersion, err := dst.Resolve(t.Context(), testVersion); err != nil || byVersion.Digest() != p.img.Digest() {
			t.Errorf("Resolve(version) = %v, %v", byVersion.Digest(), err)
		}
		// Pulling again downloads no blob.
		p.reg.take()
		if _, err := Pull(t.Context(), dst, ref, testOptions(t)); err != nil {
			t.Fatal(err)
		}
		if reqs := p.reg.take(); count(reqs, "GET /v2/imgctl/node/blobs/") != 1 { // the config only
			t.Errorf("second pull fetched blobs: %q", reqs)
		}
	}
}

func TestPushIdempotentAndSkipsExistingBlobs(t *testing.T) {
	p := pushOne(t)
	p.reg.take()
	if ref, err := Push(t.Context(), p.src, p.img, p.repo, testOptions(t)); err != nil || ref != p.ref {
		t.Fatalf("second Push = %v, %v", ref, err)
	}
	if w := writes(p.reg.take()); len(w) != 0 {
		t.Errorf("second push wrote %q", w)
	}

	// An image sharing the rootfs blob: that blob is not uploaded again.
	files := storetest.DefaultFiles("2.0.0")
	files[0].Content = storetest.DefaultFiles(testVersion)[0].Content
	img2 := storetest.PutImage(t, p.src, storetest.Config("2.0.0", 1795651300), files)
	if _, err := Push(t.Context(), p.src, img2, p.repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	reqs := p.reg.take()
	if n := count(reqs, "POST /v2/imgctl/node/blobs/uploads/"); n != 3 {
		t.Errorf("%d uploads for an image sharing one of 4 blobs, want 3: %q", n, reqs)
	}
	rootfs := img2.Manifest.Layers[0].Digest.String()
	for _, r := range writes(reqs) {
		if strings.Contains(r, rootfs) {
			t.Errorf("shared blob written: %s", r)
		}
	}
}

func TestPushVersionConflict(t *testing.T) {
	p := pushOne(t)
	other := storetest.Open(t)
	cfg := storetest.Config(testVersion, 1795651200)
	cfg.Kubernetes = "1.22.0" // same version, different image
	img := storetest.PutImage(t, other, cfg, storetest.DefaultFiles(testVersion))
	p.reg.take()
	_, err := Push(t.Context(), other, img, p.repo, testOptions(t))
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), p.img.Digest().String()) {
		t.Fatalf("pushing another image under a pushed version: %v", err)
	}
	if w := writes(p.reg.take()); len(w) != 0 {
		t.Errorf("conflicting push wrote %q", w)
	}
}

func TestPushMissingBlob(t *testing.T) {
	reg := newRegistry(t)
	src := storetest.Open(t)
	img := storetest.PutVersion(t, src, "1.0.0", 1)
	kernel := img.Manifest.Layers[1]
	path, err := src.BlobPath(kernel.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = Push(t.Context(), src, img, reg.host+"/x", testOptions(t))
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), kernel.Digest.String()) || !strings.Contains(err.Error(), "vmlinuz") {
		t.Errorf("pushing an image missing a blob: %v", err)
	}
	if reqs := reg.take(); len(reqs) != 0 {
		t.Errorf("failed push sent %q", reqs)
	}
}

func TestPullNotImgctl(t *testing.T) {
	reg := newRegistry(t)
	ctx := t.Context()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	imgRef, _ := name.ParseReference(reg.host + "/other/app:latest")
	if err := remote.Write(imgRef, img); err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(64, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	idxRef, _ := name.ParseReference(reg.host + "/other/app:multi")
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		imgRef.String(): "a container image (manifest application/vnd.docker.distribution.manifest.v2+json, config application/vnd.docker.container.image.v1+json)",
		idxRef.String(): "an image index",
	} {
		dst := storetest.Open(t)
		_, err := Pull(ctx, dst, ref, testOptions(t))
		if !errors.Is(err, ErrNotImgctl) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), ref) {
			t.Errorf("Pull(%s) = %v, want ErrNotImgctl saying %q", ref, err, want)
		}
		if imgs, err := dst.List(ctx); err != nil || len(imgs) != 0 {
			t.Errorf("store after a refused pull: %v, %v", imgs, err)
		}
	}
	if _, err := Pull(ctx, storetest.Open(t), reg.host+"/other/app:missing", testOptions(t)); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Pull of a missing tag: %v", err)
	}
}

func TestPullCorruptBlob(t *testing.T) {
	p := pushOne(t)
	var kernel manifest.Artifact
	for _, a := range manifest.Artifacts(p.img.Manifest) {
		if a.Name == "vmlinuz" {
			kernel = a
		}
	}
	// Serve the kernel with one byte flipped (same length, so only the digest can tell).
	p.reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+kernel.Digest.String()) {
			return false
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		body[0] ^= 0xff
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
		return true
	})
	dst := storetest.Open(t)
	_, err := Pull(t.Context(), dst, p.ref.String(), testOptions(t))
	if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), kernel.Digest.String()) || !strings.Contains(err.Error(), "vmlinuz") {
		t.Fatalf("Pull of a corrupted blob: %v (want an error naming %s vmlinuz)", err, kernel.Digest)
	}
	t.Logf("error: %v", err)
	if imgs, err := dst.List(t.Context()); err != nil || len(imgs) != 0 {
		t.Errorf("index after a failed pull: %v, %v", imgs, err)
	}
	if dst.HasBlob(kernel.Digest) {
		t.Errorf("corrupted blob %s stored", kernel.Digest)
	}
	if problems, err := dst.Verify(t.Context()); err != nil || len(problems) != 0 {
		t.Errorf("Verify after a failed pull = %v, %v", problems, err)
	}
	// Once the registry serves it right, the same pull succeeds.
	p.reg.setHook(nil)
	if got, err := Pull(t.Context(), dst, p.ref.String(), testOptions(t)); err != nil || got.Digest() != p.img.Digest() {
		t.Fatalf("Pull after repair = %v, %v", got.Digest(), err)
	}
}

func TestForEachStopsOnError(t *testing.T) {
	boom := errors.New("boom")
	var ran atomic.Int64
	err := forEach(context.Background(), 1, 100, func(ctx context.Context, i int) error {
		ran.Add(1)
		if i == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || ran.Load() != 4 {
		t.Errorf("forEach = %v after %d calls, want boom after 4", err, ran.Load())
	}
	// Parallel: all run, nil error.
	ran.Store(0)
	if err := forEach(context.Background(), 4, 50, func(ctx context.Context, i int) error {
		ran.Add(1)
		return nil
	}); err != nil || ran.Load() != 50 {
		t.Errorf("forEach = %v after %d calls, want nil after 50", err, ran.Load())
	}
}
