package serve

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

func newTestServer(t *testing.T, st *store.Store, o Options) (*Server, *logBuffer) {
	t.Helper()
	f := newFixture(t, st, o)
	f.s.o.Now = time.Now // real time for network tests
	return f.s, f.logs
}

func TestBlobServesReachableBlobs(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "console=ttyS0")
	s, _ := newTestServer(t, st, Options{})
	base := start(t, s)

	resp, body := get(t, "GET", base+"/blobs/"+string(img.Kernel))
	if resp.StatusCode != 200 || body != string(img.KernelBytes) {
		t.Fatalf("kernel: %s %q", resp.Status, body)
	}
	for h, want := range map[string]string{
		"ETag":          `"` + string(img.Kernel) + `"`,
		"Cache-Control": "public, max-age=31536000, immutable",
		"Content-Type":  "application/octet-stream",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	for _, d := range []string{string(img.Digest()), string(img.Manifest.Config.Digest), string(img.Initrd), string(img.Root)} {
		if resp, _ := get(t, "GET", base+"/blobs/"+d); resp.StatusCode != 200 {
			t.Errorf("%s: %s", d, resp.Status)
		}
	}
	// HEAD: the length, no body.
	resp, body = get(t, "HEAD", base+"/blobs/"+string(img.Kernel))
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != int64(len(img.KernelBytes)) {
		t.Errorf("HEAD: %s, length %d, body %q", resp.Status, resp.ContentLength, body)
	}
	// A blob of an image stored after the server started is served too.
	img2 := putPXE(t, st, "2.0.0", 1700000100, 0, "console=ttyS0")
	if resp, _ := get(t, "GET", base+"/blobs/"+string(img2.Kernel)); resp.StatusCode != 200 {
		t.Errorf("kernel of an image stored later: %s", resp.Status)
	}
}

func TestBlobPathTricks(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	// A blob in the store that no image reaches.
	orphan, _, err := st.WriteBlob(context.Background(), strings.NewReader("orphan"), -1, "")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestServer(t, st, Options{})
	base := start(t, s)
	addr := strings.TrimPrefix(base, "http://")
	hex := img.Kernel.Encoded()
	index, err := os.ReadFile(filepath.Join(st.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{
		"/blobs/sha256:" + strings.ToUpper(hex),
		"/blobs/SHA256:" + hex,
		"/blobs/sha512:" + hex + hex,
		"/blobs/sha256:" + hex + "0",
		"/blobs/sha256:" + hex[:63],
		"/blobs/" + hex,
		"/blobs/sha256:" + hex + "/",
		"/blobs/sha256:" + hex + "%2f..%2f..%2findex.json",
		"/blobs/..%2f..%2findex.json",
		"/blobs/..%2Findex.json",
		"/blobs/../index.json",
		"/blobs/%2e%2e/index.json",
		"/blobs/sha256/" + hex,
		"/blobs/",
		"/blobs",
		"/blobs/sha256:" + hex + "?x=../../index.json",
		"/blobs/" + string(orphan),
		"/index.json",
		"/blobs/sha256:" + hex + "%00",
	} {
		status, resp := rawRequest(t, addr, target)
		if strings.Contains(status, " 200 ") && target != "/blobs/sha256:"+hex+"?x=../../index.json" {
			t.Errorf("%s: %s", target, status)
		}
		if bytes.Contains([]byte(resp), index[:20]) || strings.Contains(resp, "orphan") {
			t.Errorf("%s: leaked a file:\n%s", target, resp)
		}
	}
}

func TestBlobOfDeletedImage(t *testing.T) {
	st := storetest.Open(t)
	old := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	keep := putPXE(t, st, "2.0.0", 1700000100, 0, "")
	s, _ := newTestServer(t, st, Options{})
	base := start(t, s)
	if resp, _ := get(t, "GET", base+"/blobs/"+string(old.Kernel)); resp.StatusCode != 200 {
		t.Fatalf("before gc: %s", resp.Status)
	}
	rep, err := st.GC(context.Background(), store.GCOptions{Roots: []digest.Digest{keep.Digest()}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedImages) != 1 {
		t.Fatalf("gc deleted %v", rep.DeletedImages)
	}
	p := filepath.Join(st.Dir(), "blobs", "sha256", old.Kernel.Encoded())
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("gc's grace should have kept the file itself: %v", err)
	}
	s.cat.checked.Store(0) // as if Refresh had passed
	if resp, _ := get(t, "GET", base+"/blobs/"+string(old.Kernel)); resp.StatusCode != 404 {
		t.Errorf("blob of a deleted image: %s, want 404", resp.Status)
	}
}

func TestBlobRanges(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	s, _ := newTestServer(t, st, Options{})
	base := start(t, s)
	u := base + "/blobs/" + string(img.Kernel)
	n := len(img.KernelBytes)

	resp, body := get(t, "GET", u, "Range", "bytes=2-5")
	if resp.StatusCode != 206 || body != string(img.KernelBytes[2:6]) {
		t.Errorf("range 2-5: %s %q", resp.Status, body)
	}
	resp, body = get(t, "GET", u, "Range", "bytes=-3")
	if resp.StatusCode != 206 || body != string(img.KernelBytes[n-3:]) {
		t.Errorf("suffix range: %s %q", resp.Status, body)
	}
	resp, _ = get(t, "GET", u, "Range", "bytes=1000-")
	if resp.StatusCode != 416 {
		t.Errorf("range past the end: %s, want 416", resp.Status)
	}
	if cr := resp.Header.Get("Content-Range"); cr != "bytes */"+strconv.Itoa(n) {
		t.Errorf("416 Content-Range %q", cr)
	}
	resp, body = get(t, "GET", u, "If-None-Match", `"`+string(img.Kernel)+`"`)
	if resp.StatusCode != 304 || body != "" {
		t.Errorf("If-None-Match: %s %q", resp.Status, body)
	}
	resp, _ = get(t, "GET", u, "If-None-Match", `"sha256:other"`)
	if resp.StatusCode != 200 {
		t.Errorf("If-None-Match another etag: %s", resp.Status)
	}
}

func TestBlobClientDisconnectsMidBlob(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 64<<20, "")
	s, logs := newTestServer(t, st, Options{})
	base := start(t, s)
	addr := strings.TrimPrefix(base, "http://")
	for range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "GET /blobs/"+string(img.Root)+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	}
	// The server is fine, and the connections are gone.
	resp, body := get(t, "GET", base+"/blobs/"+string(img.Kernel))
	if resp.StatusCode != 200 || body != string(img.KernelBytes) {
		t.Fatalf("after disconnects: %s", resp.Status)
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for gaugeValue(t, s) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("open connections %v after the clients left; log:\n%s", gaugeValue(t, s), logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func gaugeValue(t *testing.T, s *Server) float64 {
	t.Helper()
	mfs, err := s.o.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "imgctl_serve_open_connections" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no imgctl_serve_open_connections")
	return 0
}

// A blob corrupted on disk is served as it is (the server never hashes or repairs a blob; the
// node checks the digest), and imgctl store verify reports it.
func TestBlobCorruptedOnDiskIsServedAsIs(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	s, _ := newTestServer(t, st, Options{})
	base := start(t, s)
	storetest.Corrupt(t, st, img.Kernel, []byte("flipped bits"))
	resp, body := get(t, "GET", base+"/blobs/"+string(img.Kernel))
	if resp.StatusCode != 200 || body != "flipped bits" {
		t.Errorf("corrupted blob: %s %q", resp.Status, body)
	}
	problems, err := st.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range problems {
		found = found || strings.Contains(p.String(), img.Kernel.Encoded())
	}
	if !found {
		t.Errorf("store verify did not report the corrupted blob: %v", problems)
	}
	data, _ := os.ReadFile(filepath.Join(st.Dir(), "blobs", "sha256", img.Kernel.Encoded()))
	if string(data) != "flipped bits" {
		t.Errorf("the server changed the blob on disk: %q", data)
	}
}

func TestBlobTrustPolicy(t *testing.T) {
	st := storetest.Open(t)
	signed := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	unsigned := putPXE(t, st, "2.0.0", 1700000100, 0, "")
	priv, pub, err := sign.GenerateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := sign.LoadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubKey, err := sign.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := sign.Sign(ctx, st, signed.Image, key, sign.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	s, logs := newTestServer(t, st, Options{})
	base := start(t, s)
	// No policy yet: both are served.
	if resp, _ := get(t, "GET", base+"/blobs/"+string(unsigned.Kernel)); resp.StatusCode != 200 {
		t.Fatalf("no policy: %s", resp.Status)
	}
	if _, _, err := sign.AddStoreKey(ctx, st.Dir(), pubKey); err != nil {
		t.Fatal(err)
	}
	s.cat.checked.Store(0) // as if Refresh had passed
	if resp, _ := get(t, "GET", base+"/blobs/"+string(unsigned.Kernel)); resp.StatusCode != 404 {
		t.Errorf("unsigned image under a policy: %s, want 404", resp.Status)
	}
	if resp, _ := get(t, "GET", base+"/blobs/"+string(signed.Kernel)); resp.StatusCode != 200 {
		t.Errorf("signed image under a policy: %s", resp.Status)
	}
	if !strings.Contains(logs.String(), "trust policy refuses") {
		t.Errorf("no log line for the refused image:\n%s", logs)
	}
	// A policy that trusts another key only: what the old one accepted is refused now.
	_, pub2, err := sign.GenerateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"publicKeys": ["` + pub2 + `"]}`
	if err := os.WriteFile(filepath.Join(st.Dir(), sign.PolicyFile+".tmp"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(st.Dir(), sign.PolicyFile+".tmp"), filepath.Join(st.Dir(), sign.PolicyFile)); err != nil {
		t.Fatal(err)
	}
	s.cat.checked.Store(0)
	if resp, _ := get(t, "GET", base+"/blobs/"+string(signed.Kernel)); resp.StatusCode != 404 {
		t.Errorf("image signed by a key the new policy does not trust: %s, want 404", resp.Status)
	}
}

// A trust policy that does not load serves nothing (never "no policy"), until it is fixed.
func TestBrokenTrustPolicyServesNothing(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	f := newFixture(t, st, Options{InsecureSecrets: true})
	f.promote(t, img.Digest().String(), "prod")
	blob := "/blobs/" + string(img.Kernel)
	if w := f.do(t, "GET", blob, "10.0.0.1:1", false, ""); w.Code != 200 {
		t.Fatalf("before: %d", w.Code)
	}
	policy := filepath.Join(st.Dir(), sign.PolicyFile)
	if err := os.WriteFile(policy, []byte(`{"publicKeys": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh)
	for i := range 3 { // also within Refresh of the failure
		if w := f.do(t, "GET", blob, "10.0.0.1:1", false, ""); w.Code != 503 {
			t.Errorf("blob under a broken policy (%d): %d, want 503", i, w.Code)
		}
		if w := f.do(t, "GET", "/healthz", "10.0.0.1:1", false, ""); w.Code != 503 {
			t.Errorf("healthz under a broken policy: %d, want 503", w.Code)
		}
		if body := f.do(t, "GET", "/ipxe?mac=52:54:00:00:00:0a", "10.0.0.1:1", false, "").Body.String(); !strings.Contains(body, "cannot boot node-a: the store cannot be read") {
			t.Errorf("script under a broken policy:\n%s", body)
		}
	}
	if n := strings.Count(f.logs.String(), "serving none of its images until it is fixed"); n != 1 {
		t.Errorf("%d ERROR lines for the broken store within Refresh, want 1", n)
	}
	if err := os.Remove(policy); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh)
	if w := f.do(t, "GET", blob, "10.0.0.1:1", false, ""); w.Code != 200 {
		t.Errorf("after the fix: %d", w.Code)
	}
}
