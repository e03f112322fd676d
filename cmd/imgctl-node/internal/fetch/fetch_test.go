package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type blob struct {
	data   []byte
	digest string
}

func newBlob(t *testing.T, size int) blob {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return blob{b, digestOf(b)}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// server serves data with Range support (http.ServeContent); serve may take over a request.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string // the Range header of each request
}

func newServer(t *testing.T, data []byte, serve func(n int, w http.ResponseWriter, r *http.Request) bool) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Header.Get("Range"))
		n := len(s.requests)
		s.mu.Unlock()
		if serve != nil && serve(n, w, r) {
			return
		}
		http.ServeContent(w, r, "root.squashfs", time.Unix(1700000000, 0), bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) ranges() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// halfThenDrop sends the headers of the whole blob and half of its bytes, then drops the connection.
func halfThenDrop(data []byte, w http.ResponseWriter) {
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("Last-Modified", time.Unix(1700000000, 0).UTC().Format(http.TimeFormat))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data[:len(data)/2])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

func options(t *testing.T, url, digest string) Options {
	return Options{
		URL:           url,
		Digest:        digest,
		Dest:          filepath.Join(t.TempDir(), "root.squashfs"),
		Available:     func() (int64, error) { return 1 << 30, nil },
		Attempts:      3,
		HeaderTimeout: 2 * time.Second,
		StallTimeout:  2 * time.Second,
		Backoff:       10 * time.Millisecond,
	}
}

func check(t *testing.T, o Options, want []byte) {
	t.Helper()
	got, err := os.ReadFile(o.Dest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes differ from the served %d", len(got), len(want))
	}
	if _, err := os.Stat(o.Dest + partSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial file left behind: %v", err)
	}
}

func TestDownloadHappy(t *testing.T) {
	b := newBlob(t, 3<<20+17)
	s := newServer(t, b.data, nil)
	o := options(t, s.URL+"/blobs/"+b.digest, b.digest)
	res, err := Download(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, b.data)
	if res.Bytes != int64(len(b.data)) || res.Attempts != 1 || len(res.ResumedFrom) != 0 || res.Digest != b.digest {
		t.Errorf("result %+v", res)
	}
	if res.MBps() <= 0 {
		t.Errorf("MB/s = %v", res.MBps())
	}
}

func TestDownloadWrongDigest(t *testing.T) {
	b := newBlob(t, 1<<20)
	bad := bytes.Clone(b.data)
	bad[len(bad)/3] ^= 0x01
	s := newServer(t, bad, nil)
	o := options(t, s.URL+"/blobs/"+b.digest, b.digest)
	_, err := Download(context.Background(), o)
	want := "digest mismatch: want " + b.digest + ", got " + digestOf(bad)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	for _, p := range []string{o.Dest, o.Dest + partSuffix} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a digest mismatch: %v", p, err)
		}
	}
	if n := len(s.ranges()); n != 1 {
		t.Errorf("%d requests: a wrong digest is not retried", n)
	}
}

func TestDownloadResumesWithRange(t *testing.T) {
	b := newBlob(t, 2<<20)
	s := newServer(t, b.data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			halfThenDrop(b.data, w)
		}
		return false
	})
	o := options(t, s.URL+"/b", b.digest)
	res, err := Download(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, b.data)
	if res.Attempts != 2 || len(res.ResumedFrom) != 1 || res.ResumedFrom[0] <= 0 || res.ResumedFrom[0] > int64(len(b.data)/2) {
		t.Errorf("result %+v, want attempts=2 resumed once from at most %d", res, len(b.data)/2)
	}
	r := s.ranges()
	if len(r) != 2 || r[0] != "" || r[1] != "bytes="+strconv.Itoa(int(res.ResumedFrom[0]))+"-" {
		t.Errorf("Range headers %q", r)
	}
}

func TestDownloadRestartsWhenRangeIgnored(t *testing.T) {
	b := newBlob(t, 2<<20)
	s := newServer(t, b.data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			halfThenDrop(b.data, w)
		}
		r.Header.Del("Range") // a server without Range support answers 200 with everything
		return false
	})
	o := options(t, s.URL+"/b", b.digest)
	res, err := Download(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, b.data)
	if res.Attempts != 2 || len(res.ResumedFrom) != 0 || res.Restarts != 1 {
		t.Errorf("result %+v, want attempts=2, no resume, 1 restart", res)
	}
	if r := s.ranges(); len(r) != 2 || !strings.HasPrefix(r[1], "bytes=") {
		t.Errorf("Range headers %q: the second attempt should have asked for a range", r)
	}
}

func TestDownloadTooLargeForRAM(t *testing.T) {
	b := newBlob(t, 1<<20)
	s := newServer(t, b.data, nil)
	o := options(t, s.URL+"/b", b.digest)
	o.Available = func() (int64, error) { return 512 << 10, nil }
	_, err := Download(context.Background(), o)
	want := "the root image is 1.0 MiB (1048576 bytes) but only 512.0 KiB (524288 bytes) of RAM is available for it"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if n := len(s.ranges()); n != 1 {
		t.Errorf("%d requests: too large is not retried", n)
	}
}

func TestDownloadTooLargeWithoutLength(t *testing.T) {
	b := newBlob(t, 1<<20)
	s := newServer(t, b.data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusOK) // no Content-Length: chunked
		for i := 0; i < len(b.data); i += 64 << 10 {
			_, _ = w.Write(b.data[i : i+64<<10])
			w.(http.Flusher).Flush()
		}
		return true
	})
	o := options(t, s.URL+"/b", b.digest)
	o.Available = func() (int64, error) { return 512 << 10, nil }
	_, err := Download(context.Background(), o)
	want := "the root image is more than 512.0 KiB (524288 bytes) but only 512.0 KiB (524288 bytes) of RAM is available for it"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestDownloadRefusesNoDigest(t *testing.T) {
	b := newBlob(t, 1024)
	s := newServer(t, b.data, nil)
	o := options(t, s.URL+"/rootfs.squashfs", "")
	_, err := Download(context.Background(), o)
	want := "no digest for " + s.URL + "/rootfs.squashfs: an unverified root never boots"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if n := len(s.ranges()); n != 0 {
		t.Errorf("%d requests made for a root without a digest", n)
	}
}

func TestDownloadStallTimesOutAndResumes(t *testing.T) {
	b := newBlob(t, 2<<20)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := newServer(t, b.data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n != 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b.data)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b.data[:len(b.data)/2])
		w.(http.Flusher).Flush()
		select { // stall: the connection stays open, nothing more comes
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	o := options(t, s.URL+"/b", b.digest)
	o.StallTimeout = 300 * time.Millisecond
	start := time.Now()
	res, err := Download(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	check(t, o, b.data)
	if res.Attempts != 2 || len(res.ResumedFrom) != 1 {
		t.Errorf("result %+v, want attempts=2 resumed once", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s with a 300ms stall timeout", d)
	}
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "stalled: no data for 300ms") {
		t.Errorf("attempt errors %q", res.Errors)
	}
}

func TestDownloadHeaderTimeoutRetries(t *testing.T) {
	b := newBlob(t, 4096)
	var calls atomic.Int32
	s := newServer(t, b.data, func(n int, w http.ResponseWriter, r *http.Request) bool {
		calls.Add(1)
		if n == 1 {
			<-r.Context().Done() // never answers
			return true
		}
		return false
	})
	o := options(t, s.URL+"/b", b.digest)
	o.HeaderTimeout = 200 * time.Millisecond
	res, err := Download(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 || len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "no response within 200ms") {
		t.Errorf("result %+v", res)
	}
}

func TestDownloadGivesUp(t *testing.T) {
	var calls atomic.Int32
	s := newServer(t, nil, func(n int, w http.ResponseWriter, r *http.Request) bool {
		calls.Add(1)
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return true
	})
	o := options(t, s.URL+"/b", digestOf([]byte("x")))
	_, err := Download(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") || !strings.Contains(err.Error(), "503 Service Unavailable") {
		t.Fatalf("err = %v", err)
	}
	if calls.Load() != 3 {
		t.Errorf("%d requests, want 3", calls.Load())
	}
}

func TestDownloadNotFoundIsFinal(t *testing.T) {
	s := newServer(t, nil, func(n int, w http.ResponseWriter, r *http.Request) bool {
		http.NotFound(w, r)
		return true
	})
	o := options(t, s.URL+"/b", digestOf([]byte("x")))
	_, err := Download(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "GET "+s.URL+"/b: 404 Not Found") {
		t.Fatalf("err = %v", err)
	}
	if n := len(s.ranges()); n != 1 {
		t.Errorf("%d requests: a 404 is not retried", n)
	}
}

func TestMemAvailable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(p, []byte("MemTotal:        2000000 kB\nMemFree:          100 kB\nMemAvailable:    1500000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := MemAvailable(p)
	if err != nil || n != 1500000*1024 {
		t.Errorf("MemAvailable = %d, %v", n, err)
	}
	if err := os.WriteFile(p, []byte("MemTotal: 1 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := MemAvailable(p); err == nil || !strings.Contains(err.Error(), "no MemAvailable") {
		t.Errorf("err = %v", err)
	}
}

// TestDownloadUntrustedTLSIsFinal: an https root whose certificate the initrd cannot verify
// fails at once (retrying cannot fix it), saying so.
func TestDownloadUntrustedTLSIsFinal(t *testing.T) {
	var calls atomic.Int32
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	t.Cleanup(s.Close)
	o := options(t, s.URL+"/b", digestOf([]byte("x")))
	start := time.Now()
	res, err := Download(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "certificate") || res.Attempts != 1 {
		t.Fatalf("err = %v, attempts %d", err, res.Attempts)
	}
	if time.Since(start) > time.Second {
		t.Errorf("took %s", time.Since(start))
	}
}

// TestDownloadNeverShowsURLSecrets: a root URL may carry user info or a token in its query;
// errors and log lines (both reach the serial console) show neither.
func TestDownloadNeverShowsURLSecrets(t *testing.T) {
	b := newBlob(t, 64<<10)
	bad := bytes.Clone(b.data)
	bad[7] ^= 0x01
	for _, tc := range []struct {
		name  string
		serve func(n int, w http.ResponseWriter, r *http.Request) bool
	}{
		{"wrong digest", func(n int, w http.ResponseWriter, r *http.Request) bool {
			http.ServeContent(w, r, "root", time.Unix(1700000000, 0), bytes.NewReader(bad))
			return true
		}},
		{"dropped then not found", func(n int, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				halfThenDrop(b.data, w)
			}
			http.NotFound(w, r)
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, b.data, tc.serve)
			u := strings.Replace(s.URL, "http://", "http://node:hunter2@", 1) + "/blobs/" + b.digest + "?token=s3cr3t"
			o := options(t, u, b.digest)
			var logs bytes.Buffer
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			_, err := Download(context.Background(), o)
			if err == nil {
				t.Fatal("download succeeded")
			}
			for _, secret := range []string{"hunter2", "s3cr3t"} {
				if strings.Contains(err.Error(), secret) || strings.Contains(logs.String(), secret) {
					t.Errorf("%q shown:\nerr: %v\nlog: %s", secret, err, logs.String())
				}
			}
			if !strings.Contains(err.Error(), "/blobs/"+b.digest+"?REDACTED") {
				t.Errorf("the error should still name the URL (redacted): %v", err)
			}
		})
	}
}
