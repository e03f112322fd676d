package slotwrite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blobs"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/update"
)

// build makes a root blob of data (a multiple of BlockSize) and its hash area, as the builder
// does, and the Image describing it.
func build(t *testing.T, data []byte) ([]byte, update.Image) {
	t.Helper()
	tree, err := verity.Build(context.Background(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	blob := append(append([]byte(nil), data...), tree.HashArea()...)
	sum := sha256.Sum256(blob)
	return blob, update.Image{
		Digest: "sha256:" + strings.Repeat("1", 64), Version: "v-test", Kubernetes: "1.21.13", Architecture: "amd64",
		Root:           update.Blob{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(blob))},
		VerityRootHash: tree.RootHashHex(), VerityOffset: int64(len(data)),
	}
}

// rootData is blocks of pseudo-random data (seeded), with every 10th block all zeros.
func rootData(seed uint64, blocks int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, blocks*BlockSize)
	for i := range blocks {
		if i%10 == 9 {
			continue
		}
		for j := i * BlockSize; j < (i+1)*BlockSize; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[j+k] = byte(v >> (8 * k))
			}
		}
	}
	return b
}

// server serves blobs at /blobs/DIGEST with http.ServeContent (Range support) and counts the
// body bytes it sent. fault, when set, may answer a request itself (returning true).
type server struct {
	*httptest.Server
	mu       sync.Mutex
	blobs    map[string][]byte
	sent     atomic.Int64
	requests atomic.Int64
	fault    func(w http.ResponseWriter, r *http.Request, blob []byte) bool
}

func newServer(t *testing.T, blobList ...[]byte) *server {
	s := &server{blobs: map[string][]byte{}}
	for _, b := range blobList {
		sum := sha256.Sum256(b)
		s.blobs["sha256:"+hex.EncodeToString(sum[:])] = b
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		d, ok := strings.CutPrefix(r.URL.Path, update.BlobsPathPrefix)
		s.mu.Lock()
		b, found := s.blobs[d]
		fault := s.fault
		s.mu.Unlock()
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w, n: &s.sent}
		if fault != nil && fault(cw, r, b) {
			return
		}
		http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) setFault(f func(w http.ResponseWriter, r *http.Request, blob []byte) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (s *server) client() *blobs.Client {
	return &blobs.Client{Server: s.URL, Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		HeaderTimeout: 5 * time.Second, StallTimeout: 5 * time.Second}
}

// slotFile is a file standing in for a partition of size bytes, holding content at its start
// and old bytes (0x5a) after it.
func slotFile(t *testing.T, name string, size int64, content []byte) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	old := bytes.Repeat([]byte{0x5a}, int(size)-len(content))
	if _, err := f.WriteAt(append(append([]byte(nil), content...), old...), 0); err != nil {
		t.Fatal(err)
	}
	return f
}

// slotHolds reports whether f starts with want.
func slotHolds(t *testing.T, f *os.File, want []byte) bool {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(got, want)
}
