package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/opencontainers/go-digest"
)

const (
	envChild  = "IMGCTL_FETCH_TEST_CHILD"
	envDir    = "IMGCTL_FETCH_TEST_DIR"
	envURL    = "IMGCTL_FETCH_TEST_URL"
	envDigest = "IMGCTL_FETCH_TEST_DIGEST"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "fetch" {
		os.Exit(childFetch())
	}
	os.Exit(m.Run())
}

// childFetch fetches one URL into a shared cache directory (cross-process test).
func childFetch() int {
	ca, err := cache.Open(os.Getenv(envDir), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c := fastClient()
	d, err := c.Fetch(context.Background(), ca, os.Getenv(envURL), digest.Digest(os.Getenv(envDigest)))
	if err != nil || string(d) != os.Getenv(envDigest) {
		fmt.Fprintln(os.Stderr, "child fetch:", d, err)
		return 1
	}
	return 0
}

func fastClient() *Client {
	return &Client{Attempts: 5, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, StallTimeout: 5 * time.Second}
}

func blob(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newCache(t *testing.T) *cache.Cache {
	t.Helper()
	ca, err := cache.Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// request records what the client sent.
type request struct {
	path, rng, ifRange, acceptEncoding string
}

// recorder wraps a handler whose behavior may depend on the request number (0-based).
type recorder struct {
	mu   sync.Mutex
	reqs []request
}

func (rec *recorder) wrap(h func(w http.ResponseWriter, r *http.Request, n int)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		n := len(rec.reqs)
		rec.reqs = append(rec.reqs, request{r.URL.Path, r.Header.Get("Range"), r.Header.Get("If-Range"), r.Header.Get("Accept-Encoding")})
		rec.mu.Unlock()
		h(w, r, n)
	})
}

func (rec *recorder) list() []request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]request(nil), rec.reqs...)
}

func serve(t *testing.T, h func(w http.ResponseWriter, r *http.Request, n int)) (*httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewServer(rec.wrap(h))
	t.Cleanup(srv.Close)
	return srv, rec
}

// serveContent serves data with Range/If-Range support and a strong ETag.
func serveContent(w http.ResponseWriter, r *http.Request, data []byte, etag string) {
	w.Header().Set("ETag", etag)
	http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
}

// dropHalf announces the full length, sends half the body, then kills the connection.
func dropHalf(w http.ResponseWriter, data []byte, etag string) {
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	w.Write(data[:len(data)/2])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

func status(code int, hdr ...string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		http.Error(w, http.StatusText(code), code)
	}
}

func assertCached(t *testing.T, ca *cache.Cache, d digest.Digest, data []byte) {
	t.Helper()
	p, err := ca.Path(d)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("cached content differs (%d bytes, %v)", len(b), err)
	}
}

// assertEmpty checks that nothing was cached and no temp or partial file is left.
func assertEmpty(t *testing.T, ca *cache.Cache) {
	t.Helper()
	if es, _ := os.ReadDir(filepath.Join(ca.Dir(), "blobs", "sha256")); len(es) != 0 {
		t.Errorf("blobs cached: %v", es)
	}
	assertNoTemps(t, ca)
}

func assertNoTemps(t *testing.T, ca *cache.Cache) {
	t.Helper()
	for _, sub := range []string{"tmp", "tmp/partial"} {
		es, err := os.ReadDir(filepath.Join(ca.Dir(), sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if !e.IsDir() {
				t.Errorf("temp file left: %s/%s", sub, e.Name())
			}
		}
	}
}

func TestFetchTable(t *testing.T) {
	data := blob(100 << 10)
	good := digest.FromBytes(data)
	bad := digest.FromString("not the content")
	type step func(w http.ResponseWriter)
	ok := func(w http.ResponseWriter) { w.Header().Set("ETag", `"e"`); w.Write(data) }
	tests := []struct {
		name     string
		steps    []step // response n uses steps[min(n, len-1)]
		expected digest.Digest
		wantErr  error
		wantReqs int
		wantMsg  []string
	}{
		{"ok pinned", []step{ok}, good, nil, 1, nil},
		{"ok unpinned", []step{ok}, "", nil, 1, nil},
		{"404 permanent", []step{status(404)}, good, ErrNotFound, 1, nil},
		{"410 permanent", []step{status(410)}, good, ErrNotFound, 1, nil},
		{"403 permanent", []step{status(403)}, good, nil, 1, []string{"403"}},
		{"503 then ok", []step{status(503), status(503), ok}, good, nil, 3, nil},
		{"500 then ok", []step{status(500), ok}, good, nil, 2, nil},
		{"408 then ok", []step{status(408), ok}, good, nil, 2, nil},
		{"429 retry-after then ok", []step{status(429, "Retry-After", "1"), ok}, good, nil, 2, nil},
		{"503 forever", []step{status(503)}, good, ErrUnreachable, 5, []string{
			"unreachable; use --mirror FROM=TO to point at a local copy, or --offline to build from the cache", "503"}},
		{"digest mismatch", []step{ok}, bad, ErrDigestMismatch, 1, []string{string(bad), string(good)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
				tt.steps[min(n, len(tt.steps)-1)](w)
			})
			ca := newCache(t)
			url := srv.URL + "/file.bin"
			start := time.Now()
			d, err := fastClient().Fetch(context.Background(), ca, url, tt.expected)
			if time.Since(start) > 2*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			if got := len(rec.list()); got != tt.wantReqs {
				t.Errorf("%d requests, want %d", got, tt.wantReqs)
			}
			for _, r := range rec.list() {
				if r.acceptEncoding != "identity" {
					t.Errorf("Accept-Encoding %q", r.acceptEncoding)
				}
			}
			if tt.wantErr != nil || tt.wantMsg != nil {
				if err == nil {
					t.Fatal("no error")
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				for _, m := range append(tt.wantMsg, url) {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not mention %q", err, m)
					}
				}
				assertEmpty(t, ca)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d != good {
				t.Fatalf("digest %s", d)
			}
			assertCached(t, ca, d, data)
			if ref, err := ca.Ref(RefKind, url); err != nil || ref != good {
				t.Errorf("url ref = %s, %v", ref, err)
			}
			assertNoTemps(t, ca)
		})
	}
}

func TestResumeAfterDrop(t *testing.T) {
	data := blob(256 << 10)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			dropHalf(w, data, `"v1"`)
		}
		serveContent(w, r, data, `"v1"`)
	})
	ca := newCache(t)
	d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/x", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	reqs := rec.list()
	if len(reqs) != 2 {
		t.Fatalf("requests: %+v", reqs)
	}
	if want := fmt.Sprintf("bytes=%d-", len(data)/2); reqs[1].rng != want || reqs[1].ifRange != `"v1"` {
		t.Fatalf("second request Range %q If-Range %q, want %q", reqs[1].rng, reqs[1].ifRange, want)
	}
	if reqs[0].rng != "" {
		t.Fatalf("first request sent Range %q", reqs[0].rng)
	}
}

func TestResumeUnpinnedNeedsValidators(t *testing.T) {
	data := blob(64 << 10)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:100])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		w.Write(data) // no ETag, no Last-Modified: a resume could mix versions
	})
	ca := newCache(t)
	d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/x", "")
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	if reqs := rec.list(); len(reqs) != 2 || reqs[1].rng != "" {
		t.Fatalf("requests %+v: an unpinned download without validators must not resume", reqs)
	}
}

func TestServerIgnoresRange(t *testing.T) {
	data := blob(128 << 10)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			dropHalf(w, data, `"v1"`)
		}
		w.Header().Set("ETag", `"v1"`)
		w.Write(data) // 200 with the whole body despite Range
	})
	ca := newCache(t)
	d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/x", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	if reqs := rec.list(); len(reqs) != 2 || reqs[1].rng == "" {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestValidatorChangedRestarts(t *testing.T) {
	old, data := blob(64<<10), blob(64<<10 + 1)[:64<<10]
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		switch n {
		case 0:
			dropHalf(w, old, `"v1"`)
		case 1:
			// A server that ignores If-Range: 206 of the new version.
			w.Header().Set("ETag", `"v2"`)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", len(data)/2, len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-len(data)/2))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[len(data)/2:])
		default:
			serveContent(w, r, data, `"v2"`)
		}
	})
	ca := newCache(t)
	c := fastClient()
	c.Attempts = 2 // the restart must not consume an attempt
	d, err := c.Fetch(context.Background(), ca, srv.URL+"/x", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	reqs := rec.list()
	if len(reqs) != 3 || reqs[1].rng == "" || reqs[2].rng != "" {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestMismatchAfterResumeRetriesFromZero(t *testing.T) {
	old, data := blob(32<<10), blob(32<<10 + 7)[:32<<10]
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			dropHalf(w, old, `"same"`)
		}
		serveContent(w, r, data, `"same"`) // content changed but the ETag did not
	})
	ca := newCache(t)
	d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/x", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	if reqs := rec.list(); len(reqs) != 3 || reqs[1].rng == "" || reqs[2].rng != "" {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestStallTimeoutRetries(t *testing.T) {
	data := blob(64 << 10)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 0 {
			w.Header().Set("ETag", `"s"`)
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // stall until the client gives up
			return
		}
		serveContent(w, r, data, `"s"`)
	})
	ca := newCache(t)
	c := fastClient()
	c.StallTimeout = 150 * time.Millisecond
	start := time.Now()
	d, err := c.Fetch(context.Background(), ca, srv.URL+"/x", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %v", el)
	}
	assertCached(t, ca, d, data)
	if reqs := rec.list(); len(reqs) != 2 || reqs[1].rng != fmt.Sprintf("bytes=%d-", len(data)/2) {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestStallBeforeHeaders(t *testing.T) {
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		<-r.Context().Done()
	})
	c := fastClient()
	c.Attempts = 2
	c.StallTimeout = 50 * time.Millisecond
	_, err := c.Fetch(context.Background(), newCache(t), srv.URL+"/x", digest.FromString("x"))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "stalled") {
		t.Fatalf("err = %v", err)
	}
	if n := len(rec.list()); n != 2 {
		t.Fatalf("%d requests", n)
	}
}

func TestCancelStopsPromptly(t *testing.T) {
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Length", "1000000")
		w.Write([]byte("a little"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	c := fastClient()
	c.StallTimeout = time.Minute
	start := time.Now()
	_, err := c.Fetch(ctx, newCache(t), srv.URL+"/x", digest.FromString("x"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancel took %v", el)
	}

	// Cancellation during backoff is prompt too.
	srv2, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { status(503)(w) })
	c.Backoff, c.MaxBackoff = time.Minute, time.Minute
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := c.Fetch(ctx, newCache(t), srv2.URL+"/x", ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancel during backoff took %v", el)
	}
}

func TestCachedHitNoNetwork(t *testing.T) {
	data := []byte("already here")
	ca := newCache(t)
	w, _ := ca.NewWriter(context.Background())
	w.Write(data)
	d, _, err := w.Commit("", -1)
	if err != nil {
		t.Fatal(err)
	}
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { status(500)(w) })
	for _, offline := range []bool{false, true} {
		c := fastClient()
		c.Offline = offline
		got, err := c.Fetch(context.Background(), ca, srv.URL+"/never-contacted", d)
		if err != nil || got != d {
			t.Fatalf("offline=%v: %s %v", offline, got, err)
		}
	}
	if n := len(rec.list()); n != 0 {
		t.Fatalf("cache hit made %d requests", n)
	}
}

func TestOffline(t *testing.T) {
	data := blob(1000)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { w.Write(data) })
	ca := newCache(t)
	c := fastClient()
	c.Offline = true
	url := srv.URL + "/y"
	if _, err := c.Fetch(context.Background(), ca, url, digest.FromBytes(data)); !errors.Is(err, ErrOffline) {
		t.Fatalf("miss: %v", err)
	}
	if _, err := c.Fetch(context.Background(), ca, url, ""); !errors.Is(err, ErrOffline) {
		t.Fatalf("unpinned miss: %v", err)
	}
	if _, err := c.Get(context.Background(), url); !errors.Is(err, ErrOffline) {
		t.Fatalf("Get: %v", err)
	}
	if n := len(rec.list()); n != 0 {
		t.Fatalf("offline client made %d requests", n)
	}
	// Once fetched online, an unpinned offline fetch resolves through the URL ref.
	online := fastClient()
	d, err := online.Fetch(context.Background(), ca, url, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Fetch(context.Background(), ca, url, "")
	if err != nil || got != d {
		t.Fatalf("unpinned offline hit: %s %v", got, err)
	}
	if n := len(rec.list()); n != 1 {
		t.Fatalf("%d requests", n)
	}
}

func TestMirror(t *testing.T) {
	data := blob(5000)
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if r.URL.Path != "/k8s/release/kubelet" {
			status(404)(w)
			return
		}
		w.Write(data)
	})
	c := fastClient()
	c.Mirrors = []Mirror{
		{From: "https://dl.k8s.io/", To: "http://wrong.invalid/"},
		{From: "https://dl.k8s.io/release/", To: srv.URL + "/k8s/release/"},
	}
	ca := newCache(t)
	d, err := c.Fetch(context.Background(), ca, "https://dl.k8s.io/release/kubelet", digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)
	if reqs := rec.list(); len(reqs) != 1 || reqs[0].path != "/k8s/release/kubelet" {
		t.Fatalf("requests %+v", reqs)
	}

	// A failing mirror is named next to the original URL.
	down, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { status(502)(w) })
	c.Mirrors = []Mirror{{From: "https://example.org/", To: down.URL + "/"}}
	c.Attempts = 2
	_, err = c.Fetch(context.Background(), ca, "https://example.org/a.tar", digest.FromString("a"))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "https://example.org/a.tar") ||
		!strings.Contains(err.Error(), down.URL+"/a.tar") || !strings.Contains(err.Error(), "--offline") {
		t.Fatalf("err = %v", err)
	}
}

func TestRewrite(t *testing.T) {
	c := &Client{Mirrors: []Mirror{
		{From: "https://dl.k8s.io/", To: "https://mirror.local/k8s/"},
		{From: "https://dl.k8s.io/release/v1.21.13/", To: "file:///srv/k8s-1.21.13/"},
		{From: "https://deb.debian.org/debian/", To: "http://10.0.0.1/debian/"},
	}}
	tests := []struct{ in, want string }{
		{"https://dl.k8s.io/release/stable.txt", "https://mirror.local/k8s/release/stable.txt"},
		{"https://dl.k8s.io/release/v1.21.13/bin/kubelet", "file:///srv/k8s-1.21.13/bin/kubelet"},
		{"https://deb.debian.org/debian/pool/x.deb", "http://10.0.0.1/debian/pool/x.deb"},
		{"https://example.org/dl.k8s.io/", "https://example.org/dl.k8s.io/"},
		{"https://dl.k8s.io", "https://dl.k8s.io"},
	}
	for _, tt := range tests {
		if got := c.Rewrite(tt.in); got != tt.want {
			t.Errorf("Rewrite(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := (&Client{}).Rewrite("https://x/y"); got != "https://x/y" {
		t.Errorf("no mirrors: %q", got)
	}
}

func TestParseMirror(t *testing.T) {
	tests := []struct {
		in      string
		want    Mirror
		wantErr string
	}{
		{"https://dl.k8s.io/=https://mirror.local/k8s/", Mirror{"https://dl.k8s.io/", "https://mirror.local/k8s/"}, ""},
		{" https://a/x = file:///srv/x ", Mirror{"https://a/x", "file:///srv/x"}, ""},
		{"https://dl.k8s.io/", Mirror{}, "want FROM=TO"},
		{"=https://m/", Mirror{}, "want FROM=TO"},
		{"https://a/=", Mirror{}, "want FROM=TO"},
		{"dl.k8s.io/=https://m/", Mirror{}, "must start with http://, https:// or file://"},
		{"https:///x/=https://m/", Mirror{}, "has no host"},
		{"https://a/=https://m", Mirror{}, "both end with"},
		{"ftp://a/=https://m/", Mirror{}, "must start with"},
		{"https://a/=file://", Mirror{}, "has no path"},
	}
	for _, tt := range tests {
		got, err := ParseMirror(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseMirror(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseMirror(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestConcurrentFetchDownloadsOnce(t *testing.T) {
	data := blob(512 << 10)
	var full atomic.Int32
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		full.Add(1)
		time.Sleep(20 * time.Millisecond)
		serveContent(w, r, data, `"c"`)
	})
	ca := newCache(t)
	want := digest.FromBytes(data)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/big", want)
			if err != nil || d != want {
				t.Errorf("Fetch = %s, %v", d, err)
			}
		})
	}
	wg.Wait()
	if n := full.Load(); n != 1 {
		t.Fatalf("%d downloads, want 1", n)
	}
	assertCached(t, ca, want, data)
}

func TestCrossProcessFetchDownloadsOnce(t *testing.T) {
	data := blob(256 << 10)
	var hits atomic.Int32
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		hits.Add(1)
		time.Sleep(100 * time.Millisecond) // long enough for the others to queue on the lock
		serveContent(w, r, data, `"p"`)
	})
	ca := newCache(t)
	want := digest.FromBytes(data)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for range 3 {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=fetch", envDir+"="+ca.Dir(), envURL+"="+srv.URL+"/blob", envDigest+"="+string(want))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	if d, err := fastClient().Fetch(context.Background(), ca, srv.URL+"/blob", want); err != nil || d != want {
		t.Errorf("parent Fetch = %s, %v", d, err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d downloads across 4 processes, want 1", n)
	}
	assertCached(t, ca, want, data)
}

func TestFileURL(t *testing.T) {
	dir := t.TempDir()
	data := blob(3000)
	p := filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ca := newCache(t)
	c := fastClient()
	c.Offline = true // local files are not network
	d, err := c.Fetch(context.Background(), ca, "file://"+p, digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	assertCached(t, ca, d, data)

	ca2 := newCache(t)
	bad := digest.FromString("other")
	if _, err := c.Fetch(context.Background(), ca2, "file://"+p, bad); !errors.Is(err, ErrDigestMismatch) ||
		!strings.Contains(err.Error(), string(bad)) || !strings.Contains(err.Error(), string(digest.FromBytes(data))) {
		t.Fatalf("mismatch: %v", err)
	}
	assertEmpty(t, ca2)
	if _, err := c.Fetch(context.Background(), ca2, "file://"+filepath.Join(dir, "nope"), ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	rc, err := c.Get(context.Background(), "file://"+p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(b, data) {
		t.Fatal("Get(file) content differs")
	}
	if _, err := c.Fetch(context.Background(), ca2, "ftp://x/y", ""); err == nil || !strings.Contains(err.Error(), "unsupported URL scheme") {
		t.Fatalf("ftp: %v", err)
	}
}

func TestGet(t *testing.T) {
	srv, rec := serve(t, func(w http.ResponseWriter, r *http.Request, n int) {
		switch {
		case r.URL.Path == "/missing":
			status(404)(w)
		case n == 0:
			status(503)(w)
		default:
			w.Write([]byte("index v1\n"))
		}
	})
	c := fastClient()
	rc, err := c.Get(context.Background(), srv.URL+"/index")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "index v1\n" || len(rec.list()) != 2 {
		t.Fatalf("Get = %q after %d requests", b, len(rec.list()))
	}
	if _, err := c.Get(context.Background(), srv.URL+"/missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("404: %v", err)
	}
	if n := len(rec.list()); n != 3 {
		t.Fatalf("404 retried: %d requests", n)
	}
}

func TestUnreachableHost(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/gone"
	srv.Close() // connection refused on loopback
	c := fastClient()
	c.Attempts = 3
	_, err := c.Fetch(context.Background(), newCache(t), url, digest.FromString("x"))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), url) ||
		!strings.Contains(err.Error(), "unreachable; use --mirror FROM=TO to point at a local copy, or --offline to build from the cache") {
		t.Fatalf("err = %v", err)
	}
	if _, err := c.Get(context.Background(), url); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Get: %v", err)
	}
}

func TestProgress(t *testing.T) {
	data := blob(300 << 10)
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { serveContent(w, r, data, `"g"`) })
	var mu sync.Mutex
	var events []Progress
	c := fastClient()
	c.Progress = func(p Progress) {
		mu.Lock()
		events = append(events, p)
		mu.Unlock()
	}
	if _, err := c.Fetch(context.Background(), newCache(t), srv.URL+"/p", digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	dones := 0
	for _, e := range events {
		if e.Done {
			dones++
		}
		if e.URL != srv.URL+"/p" || e.Total != int64(len(data)) {
			t.Errorf("event %+v", e)
		}
	}
	last := events[len(events)-1]
	if dones != 1 || !last.Done || last.Complete != int64(len(data)) {
		t.Fatalf("events %+v", events)
	}
}

func TestDelay(t *testing.T) {
	c := &Client{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	for n := 1; n <= 10; n++ {
		d := c.delay(n, 0)
		base := min(100*time.Millisecond<<(n-1), time.Second)
		if d < base/2 || d > base {
			t.Errorf("delay(%d) = %v, want in [%v, %v]", n, d, base/2, base)
		}
	}
	if d := c.delay(1, 500*time.Millisecond); d != 500*time.Millisecond {
		t.Errorf("Retry-After not honored: %v", d)
	}
	if d := c.delay(1, time.Hour); d != time.Second {
		t.Errorf("Retry-After not capped: %v", d)
	}
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{{"", 0}, {"3", 3 * time.Second}, {"junk", 0}, {"-1", 0}} {
		if got := retryAfter(tt.v); got != tt.want {
			t.Errorf("retryAfter(%q) = %v", tt.v, got)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 10-19/20", 10, 20, true},
		{"bytes 0-0/*", 0, -1, true},
		{"bytes 10-19/15", 0, 0, false},
		{"bytes */20", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tt := range tests {
		s, tot, ok := parseContentRange(tt.in)
		if ok != tt.ok || (ok && (s != tt.start || tot != tt.total)) {
			t.Errorf("parseContentRange(%q) = %d %d %v", tt.in, s, tot, ok)
		}
	}
}

// A failed download ends with a Done event that says why, so a progress display does not
// show it as finished.
func TestProgressReportsFailure(t *testing.T) {
	data := blob(64 << 10)
	srv, _ := serve(t, func(w http.ResponseWriter, r *http.Request, n int) { serveContent(w, r, data, `"g"`) })
	var mu sync.Mutex
	var last Progress
	c := fastClient()
	c.Progress = func(p Progress) {
		mu.Lock()
		last = p
		mu.Unlock()
	}
	_, err := c.Fetch(context.Background(), newCache(t), srv.URL+"/p", digest.FromString("something else"))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
	if !last.Done || !errors.Is(last.Err, ErrDigestMismatch) {
		t.Fatalf("last event %+v, want Done with the mismatch", last)
	}
}
