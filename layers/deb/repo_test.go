package deb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
)

// httpGetter is a minimal Getter over net/http.
type httpGetter struct{ c *http.Client }

func (g httpGetter) Get(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := g.c.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Body, nil
}

const testPackages = `Package: containerd
Version: 1.6.20~ds1-1
Architecture: amd64
Depends: libc6 (>= 2.34), runc (>= 1.0.0~rc2~)
Filename: pool/main/c/containerd/containerd_1.6.20~ds1-1_amd64.deb
Size: 100
SHA256: 1111111111111111111111111111111111111111111111111111111111111111

Package: containerd
Version: 1.6.20~ds1-1+deb12u1
Architecture: amd64
Depends: libc6 (>= 2.34),
 runc (>= 1.0.0~rc2~)
Filename: pool/main/c/containerd/containerd_1.6.20~ds1-1+deb12u1_amd64.deb
Size: 200
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: containerd
Version: 1.6.20~ds1-1~rc1
Architecture: amd64
Filename: pool/main/c/containerd/containerd_1.6.20~ds1-1~rc1_amd64.deb
Size: 50
SHA256: 5555555555555555555555555555555555555555555555555555555555555555

Package: runc
Version: 1.1.5+ds1-1
Architecture: amd64
Filename: pool/main/r/runc/runc_1.1.5+ds1-1_amd64.deb
Size: 300
SHA256: 3333333333333333333333333333333333333333333333333333333333333333

Package: linux-image-cloud-amd64
Version: 6.1.119-1
Architecture: amd64
Depends: initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)
Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.119-1_amd64.deb
Size: 1500
SHA256: 4444444444444444444444444444444444444444444444444444444444444444

Package: linux-image-6.1.0-28-cloud-amd64
Version: 6.1.119-1
Architecture: amd64
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb
Size: 40000000
SHA256: 6666666666666666666666666666666666666666666666666666666666666666

Package: linux-image-6.1.0-28-cloud-amd64
Version: 6.1.119-2
Architecture: amd64
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-2_amd64.deb
Size: 40000001
SHA256: 7777777777777777777777777777777777777777777777777777777777777777
`

// testRepo is a synthetic signed repository served by httptest.
type testRepo struct {
	t        *testing.T
	signer   *openpgp.Entity
	keyring  string // armored public keyring file
	srv      *httptest.Server
	mu       sync.Mutex
	files    map[string][]byte
	requests map[string]int
	total    atomic.Int64
}

func newTestRepo(t *testing.T) *testRepo {
	t.Helper()
	e, err := openpgp.NewEntity("imgctl test archive", "", "archive@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRepo{t: t, signer: e, files: map[string][]byte{}, requests: map[string]int{}}
	tr.keyring = writeKeyring(t, e, true)
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.total.Add(1)
		tr.mu.Lock()
		tr.requests[r.URL.Path]++
		b, ok := tr.files[r.URL.Path]
		tr.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

func writeKeyring(t *testing.T, e *openpgp.Entity, armored bool) string {
	t.Helper()
	var buf bytes.Buffer
	if armored {
		w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Serialize(w); err != nil {
			t.Fatal(err)
		}
		w.Close()
	} else if err := e.Serialize(&buf); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keyring.gpg")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (tr *testRepo) put(path string, b []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.files[path] = b
}

func (tr *testRepo) count(path string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.requests[path]
}

func clearsignWith(t *testing.T, e *openpgp.Entity, text string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := clearsign.Encode(&buf, e.PrivateKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, text)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// publish writes Packages files (for each ext) and a signed InRelease
// listing them. extra is appended to the Release header; hashes
// overrides listed hashes by file name.
func (tr *testRepo) publish(suite string, exts []string, extra string, hashes map[string]string) {
	tr.t.Helper()
	var sums strings.Builder
	for _, ext := range exts {
		b := compress(tr.t, ext, []byte(testPackages))
		name := "main/binary-amd64/Packages" + ext
		tr.put("/debian/dists/"+suite+"/"+name, b)
		h := sha(b)
		tr.put("/debian/dists/"+suite+"/main/binary-amd64/by-hash/SHA256/"+h, b)
		if o, ok := hashes[name]; ok {
			h = o
		}
		fmt.Fprintf(&sums, " %s %8d %s\n", h, len(b), name)
	}
	rel := "Origin: Test\nSuite: stable\nCodename: " + suite + "\nDate: Sat, 09 Nov 2024 10:00:00 UTC\n" +
		"Architectures: amd64 arm64\nComponents: main contrib\n" + extra +
		"MD5Sum:\n 00000000000000000000000000000000 1 main/binary-amd64/Packages\nSHA256:\n" + sums.String()
	tr.put("/debian/dists/"+suite+"/InRelease", clearsignWith(tr.t, tr.signer, rel))
}

func (tr *testRepo) repo(suite string) *Repo {
	return &Repo{
		BaseURL: tr.srv.URL + "/debian/",
		Suite:   suite,
		Keyring: tr.keyring,
		Getter:  httpGetter{tr.srv.Client()},
	}
}

func TestResolve(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz", ".gz", ""}, "", nil)
	r := tr.repo("bookworm")
	ctx := context.Background()

	got, err := r.Resolve(ctx, "containerd", "")
	if err != nil {
		t.Fatal(err)
	}
	want := Resolved{
		Package: "containerd", Version: "1.6.20~ds1-1+deb12u1", Architecture: "amd64",
		URL:    tr.srv.URL + "/debian/pool/main/c/containerd/containerd_1.6.20~ds1-1+deb12u1_amd64.deb",
		SHA256: strings.Repeat("2", 64), Size: 200, Depends: "libc6 (>= 2.34), runc (>= 1.0.0~rc2~)",
	}
	if got != want {
		t.Errorf("Resolve newest:\n got %+v\nwant %+v", got, want)
	}
	got, err = r.Resolve(ctx, "containerd", "1.6.20~ds1-1")
	if err != nil || got.Size != 100 {
		t.Errorf("Resolve pinned = %+v, %v", got, err)
	}
	got, err = r.Resolve(ctx, "runc", "0:1.1.5+ds1-1")
	if err != nil || got.Version != "1.1.5+ds1-1" {
		t.Errorf("Resolve with epoch 0 = %+v, %v", got, err)
	}
	if n := tr.count("/debian/dists/bookworm/InRelease"); n != 1 {
		t.Errorf("InRelease fetched %d times, want 1 (cached)", n)
	}
	if n := tr.count("/debian/dists/bookworm/main/binary-amd64/Packages.xz"); n != 1 {
		t.Errorf("Packages.xz fetched %d times, want 1", n)
	}
	if n := tr.count("/debian/dists/bookworm/main/binary-amd64/Packages.gz"); n != 0 {
		t.Errorf("Packages.gz fetched %d times, want 0", n)
	}

	_, err = r.Resolve(ctx, "containerd", "9.9")
	for _, s := range []string{`"containerd" version 9.9 not found`, "/dists/bookworm/main/binary-amd64/Packages.xz", "available: 1.6.20~ds1-1+deb12u1, 1.6.20~ds1-1, 1.6.20~ds1-1~rc1"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("missing version: error %v, want %q", err, s)
		}
	}
	_, err = r.Resolve(ctx, "containerdd", "")
	for _, s := range []string{`package "containerdd" not found in ` + tr.srv.URL, "similar names: containerd"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("missing package: error %v, want %q", err, s)
		}
	}
	_, err = r.Resolve(ctx, "linux-image-cloud", "")
	if err == nil || !strings.Contains(err.Error(), "linux-image-cloud-amd64") {
		t.Errorf("missing package: error %v, want close name linux-image-cloud-amd64", err)
	}
}

func TestResolveFollow(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "", nil)
	r := tr.repo("bookworm")
	ctx := context.Background()
	got, err := r.ResolveFollow(ctx, "linux-image-cloud-amd64", "", "linux-image-")
	if err != nil {
		t.Fatal(err)
	}
	// The (= 6.1.119-1) constraint wins over the newer 6.1.119-2.
	if got.Package != "linux-image-6.1.0-28-cloud-amd64" || got.Version != "6.1.119-1" || got.Size != 40000000 {
		t.Errorf("ResolveFollow = %+v", got)
	}
	// No constraint: newest.
	got, err = r.ResolveFollow(ctx, "containerd", "", "runc")
	if err != nil || got.Package != "runc" {
		t.Errorf("ResolveFollow(containerd → runc) = %+v, %v", got, err)
	}
	_, err = r.ResolveFollow(ctx, "containerd", "", "linux-")
	if err == nil || !strings.Contains(err.Error(), `no dependency starting with "linux-" (depends on: libc6, runc)`) {
		t.Errorf("no match: %v", err)
	}
	_, err = r.ResolveFollow(ctx, "containerd", "", "libc6")
	if err == nil || !strings.Contains(err.Error(), `package "libc6" not found`) {
		t.Errorf("dependency missing from index: %v", err)
	}
}

func TestResolveFallbackGz(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".gz", ""}, "", nil)
	r := tr.repo("bookworm")
	if _, err := r.Resolve(context.Background(), "runc", ""); err != nil {
		t.Fatal(err)
	}
	if tr.count("/debian/dists/bookworm/main/binary-amd64/Packages.gz") != 1 {
		t.Error("Packages.gz not used")
	}
	tr2 := newTestRepo(t)
	tr2.publish("bookworm", []string{""}, "", nil)
	if _, err := tr2.repo("bookworm").Resolve(context.Background(), "runc", ""); err != nil {
		t.Fatal(err)
	}
}

func TestResolveByHash(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "Acquire-By-Hash: yes\n", nil)
	r := tr.repo("bookworm")
	r.Logger = testLogger(t)
	if _, err := r.Resolve(context.Background(), "runc", ""); err != nil {
		t.Fatal(err)
	}
	if n := tr.count("/debian/dists/bookworm/main/binary-amd64/Packages.xz"); n != 0 {
		t.Errorf("canonical Packages.xz fetched %d times, want by-hash only", n)
	}
}

func TestResolveHashMismatch(t *testing.T) {
	tr := newTestRepo(t)
	bad := strings.Repeat("ab", 32)
	tr.publish("bookworm", []string{".xz"}, "", map[string]string{"main/binary-amd64/Packages.xz": bad})
	_, err := tr.repo("bookworm").Resolve(context.Background(), "runc", "")
	want := "hash mismatch for " + tr.srv.URL + "/debian/dists/bookworm/main/binary-amd64/Packages.xz"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("error %v, want %q", err, want)
	}

	// Content corrupted on the server after signing: size mismatch.
	tr.publish("bookworm", []string{".xz"}, "", nil)
	tr.put("/debian/dists/bookworm/main/binary-amd64/Packages.xz", []byte("corrupt"))
	_, err = tr.repo("bookworm").Resolve(context.Background(), "runc", "")
	if err == nil || !strings.Contains(err.Error(), "size mismatch for") {
		t.Fatalf("error %v, want size mismatch", err)
	}
}

func TestResolveBadSignature(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "", nil)
	in := tr.files["/debian/dists/bookworm/InRelease"]

	// Signed text altered after signing.
	tampered := bytes.Replace(in, []byte("Origin: Test"), []byte("Origin: Evil"), 1)
	tr.put("/debian/dists/bookworm/InRelease", tampered)
	_, err := tr.repo("bookworm").Resolve(context.Background(), "runc", "")
	want := "bad signature on " + tr.srv.URL + "/debian/dists/bookworm/InRelease"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("tampered: error %v, want %q", err, want)
	}

	// Signed by a key that is not in the keyring.
	other, err := openpgp.NewEntity("someone else", "", "x@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	clear, _ := clearsign.Decode(in)
	tr.put("/debian/dists/bookworm/InRelease", clearsignWith(t, other, string(clear.Plaintext)))
	_, err = tr.repo("bookworm").Resolve(context.Background(), "runc", "")
	if err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("unknown key: error %v", err)
	}

	// Not signed at all.
	tr.put("/debian/dists/bookworm/InRelease", clear.Plaintext)
	_, err = tr.repo("bookworm").Resolve(context.Background(), "runc", "")
	if err == nil || !strings.Contains(err.Error(), "not an OpenPGP clearsigned message") {
		t.Fatalf("unsigned: error %v", err)
	}

	// The right key as a binary keyring works.
	tr.put("/debian/dists/bookworm/InRelease", in)
	r := tr.repo("bookworm")
	r.Keyring = writeKeyring(t, tr.signer, false)
	if _, err := r.Resolve(context.Background(), "runc", ""); err != nil {
		t.Fatalf("binary keyring: %v", err)
	}
}

func TestResolveErrors(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "", nil)
	ctx := context.Background()

	r := tr.repo("bookworm")
	r.Keyring = "/nonexistent/keyring.gpg"
	if _, err := r.Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "/nonexistent/keyring.gpg") {
		t.Errorf("missing keyring: %v", err)
	}

	garbage := filepath.Join(t.TempDir(), "garbage.gpg")
	os.WriteFile(garbage, []byte("garbage"), 0o644)
	r = tr.repo("bookworm")
	r.Keyring = garbage
	if _, err := r.Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "parsing keyring "+garbage) {
		t.Errorf("garbage keyring: %v", err)
	}

	if _, err := tr.repo("trixie").Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "/dists/trixie/InRelease: 404") {
		t.Errorf("missing suite: %v", err)
	}

	// A correctly signed InRelease for another suite is rejected.
	tr.put("/debian/dists/trixie/InRelease", tr.files["/debian/dists/bookworm/InRelease"])
	if _, err := tr.repo("trixie").Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), `not "trixie"`) {
		t.Errorf("suite mismatch: %v", err)
	}

	r = tr.repo("bookworm")
	r.Arch = "riscv64"
	if _, err := r.Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "no SHA256 for main/binary-riscv64/Packages") || !strings.Contains(err.Error(), "architectures: amd64 arm64") {
		t.Errorf("missing arch: %v", err)
	}

	tr.publish("old", []string{".xz"}, "Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC\n", nil)
	if _, err := tr.repo("old").Resolve(ctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired release: %v", err)
	}

	r = tr.repo("bookworm")
	r.Getter = nil
	if _, err := r.Resolve(ctx, "runc", ""); err == nil {
		t.Error("nil Getter accepted")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tr.repo("bookworm").Resolve(cctx, "runc", ""); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("canceled context: %v", err)
	}
}

func TestResolveBadIndexEntry(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{""}, "", nil)
	// Replace the index with one whose Filename escapes the archive and
	// re-sign it.
	evil := []byte("Package: x\nVersion: 1\nFilename: ../../etc/passwd\nSize: 1\nSHA256: " + strings.Repeat("0", 64) + "\n\n" +
		"Package: y\nVersion: 1\nFilename: pool/y.deb\nSize: 1\nSHA256: " + strings.Repeat("0", 64) + "\n")
	tr.put("/debian/dists/bookworm/main/binary-amd64/Packages", evil)
	rel := fmt.Sprintf("Codename: bookworm\nSHA256:\n %s %d main/binary-amd64/Packages\n", sha(evil), len(evil))
	tr.put("/debian/dists/bookworm/InRelease", clearsignWith(t, tr.signer, rel))
	r := tr.repo("bookworm")
	_, err := r.Resolve(context.Background(), "x", "")
	if err == nil || !strings.Contains(err.Error(), `"x"`) || !strings.Contains(err.Error(), "invalid Filename") {
		t.Fatalf("error %v", err)
	}
	// Other entries stay usable.
	if y, err := r.Resolve(context.Background(), "y", ""); err != nil || y.URL != tr.srv.URL+"/debian/pool/y.deb" {
		t.Fatalf("y = %+v, %v", y, err)
	}
}

func TestResolveConcurrent(t *testing.T) {
	tr := newTestRepo(t)
	tr.publish("bookworm", []string{".xz"}, "", nil)
	r := tr.repo("bookworm")
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			_, err := r.Resolve(context.Background(), "containerd", "")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := tr.count("/debian/dists/bookworm/InRelease"); n != 1 {
		t.Errorf("InRelease fetched %d times by concurrent callers, want 1", n)
	}
}
