package store

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// TestOpenRefusesToReplaceALostIndex: a store whose blobs exist but whose index.json is gone,
// empty or unreadable is not silently given a new empty index (after which gc would delete
// every blob): Open fails, names the file and the blobs, and leaves index.json as it was.
func TestOpenRefusesToReplaceALostIndex(t *testing.T) {
	tests := []struct {
		name   string
		blobs  bool                         // store an image first
		damage func(t *testing.T, p string) // p: index.json
		want   []string                     // error substrings; nil = Open succeeds
	}{
		{"missing, no blobs", false, func(t *testing.T, p string) { remove(t, p) }, nil},
		{"missing", true, func(t *testing.T, p string) { remove(t, p) },
			[]string{"index.json is missing but", "blobs holds 3 blobs", "refusing", "restore index.json"}},
		{"empty file", true, func(t *testing.T, p string) { write(t, p, "") },
			[]string{"index.json is empty but", "blobs holds 3 blobs", "restore index.json"}},
		{"empty file, no blobs", false, func(t *testing.T, p string) { write(t, p, " \n") },
			[]string{"index.json is empty"}},
		{"truncated", true, func(t *testing.T, p string) { write(t, p, `{"schemaVersion":2,`) },
			[]string{"index.json is unreadable", "unexpected EOF", "blobs holds 3 blobs", "restore index.json"}},
		{"missing, oci-layout missing too", true, func(t *testing.T, p string) {
			remove(t, p)
			remove(t, filepath.Join(filepath.Dir(p), layoutFile))
		}, []string{"index.json is missing but", "blobs holds 3 blobs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			s, err := Open(t.Context(), dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.blobs {
				putTestImage(t, s, "v1", 100)
			}
			p := filepath.Join(dir, indexFile)
			tt.damage(t, p)
			before, beforeErr := os.ReadFile(p)
			_, err = Open(t.Context(), dir, nil)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Open succeeded; index.json now %q", readFile(t, p))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Open error %q lacks %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("Open error %q does not name %s", err, p)
			}
			after, afterErr := os.ReadFile(p)
			if string(before) != string(after) || errors.Is(beforeErr, fs.ErrNotExist) != errors.Is(afterErr, fs.ErrNotExist) {
				t.Errorf("index.json changed from %q (%v) to %q (%v)", before, beforeErr, after, afterErr)
			}
		})
	}
}

// TestGCAndVerifyWithALostIndex: if index.json goes after the store was opened, or is
// replaced by an empty one while blobs still hold image manifests (what an older imgctl left
// after recreating a lost index), Verify reports it and GC, dry run or not, deletes nothing.
func TestGCAndVerifyWithALostIndex(t *testing.T) {
	emptyIndex := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	tests := []struct {
		name       string
		damage     func(t *testing.T, s *Store)
		verifyWant string // a problem containing this; "" = clean
		gcWant     string // error substring; "" = GC runs
	}{
		{"index removed after Open", func(t *testing.T, s *Store) { remove(t, s.path(indexFile)) },
			"index.json: missing, but", "index.json is missing but"},
		{"index emptied", func(t *testing.T, s *Store) { write(t, s.path(indexFile), "") },
			"index.json: empty, but", "index.json is empty but"},
		{"index replaced by an empty one", func(t *testing.T, s *Store) { write(t, s.path(indexFile), emptyIndex) },
			"blobs holds 2 image manifests (sha256:", "index.json lists no images, but"},
	}
	for _, tt := range tests {
		for _, dry := range []bool{true, false} {
			t.Run(tt.name+map[bool]string{true: " dry run", false: ""}[dry], func(t *testing.T) {
				s := newStore(t)
				gcImage(t, s, "v1", 100, "rootfs v1")
				gcImage(t, s, "v2", 200, "rootfs v2")
				age(t, s, 48*time.Hour)
				tt.damage(t, s)
				_, blobs0 := snapshot2(t, s)

				probs, err := s.Verify(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				if !hasProblem(probs, tt.verifyWant) {
					t.Errorf("Verify = %v, want a problem containing %q", probs, tt.verifyWant)
				}
				rep, err := s.GC(t.Context(), GCOptions{DryRun: dry})
				if err == nil || !strings.Contains(err.Error(), tt.gcWant) {
					t.Fatalf("GC = %+v, %v; want an error containing %q", rep, err, tt.gcWant)
				}
				if !strings.Contains(err.Error(), "nothing was deleted") {
					t.Errorf("GC error %q does not say nothing was deleted", err)
				}
				if _, blobs1 := snapshot2(t, s); len(blobs1) != len(blobs0) {
					t.Errorf("GC removed blobs: %d before, %d after", len(blobs0), len(blobs1))
				}
			})
		}
	}
}

// TestEmptyIndexWithOnlyLayerBlobs: what a build that died before indexing its image leaves
// (layer blobs, no manifest) is not a lost index: Verify is clean and GC collects it.
func TestEmptyIndexWithOnlyLayerBlobs(t *testing.T) {
	s := newStore(t)
	a := putArtifact(t, s, "rootfs.tar", "application/octet-stream", []byte("a layer of a build that died"))
	age(t, s, 2*time.Hour)
	mustVerifyClean(t, s)
	rep, err := s.GC(t.Context(), GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedBlobs) != 1 || rep.DeletedBlobs[0] != a.Digest {
		t.Errorf("GC deleted %v, want %s", rep.DeletedBlobs, a.Digest)
	}
}

// snapshot2 is snapshot for a store whose index.json may be missing.
func snapshot2(t *testing.T, s *Store) (string, map[digest.Digest]time.Time) {
	t.Helper()
	idx, _ := os.ReadFile(s.path(indexFile))
	blobs := map[digest.Digest]time.Time{}
	for _, d := range storedBlobs(t, s) {
		blobs[d] = blobMtime(t, s, d)
	}
	return string(idx), blobs
}

func hasProblem(probs []Problem, want string) bool {
	if want == "" {
		return len(probs) == 0
	}
	for _, p := range probs {
		if strings.Contains(p.String(), want) {
			return true
		}
	}
	return false
}

func remove(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, _ := os.ReadFile(p)
	return string(b)
}

// TestGCThatEmptiedTheIndexRunsAgain: GC itself may empty the index, sparing the young
// manifests of the images it dropped; the next GC, an hour later, collects them rather than
// taking them for the images of a lost index.
func TestGCThatEmptiedTheIndexRunsAgain(t *testing.T) {
	s := newStore(t)
	v1 := gcImage(t, s, "v1", 100, "rootfs v1")
	rep, err := s.GC(t.Context(), GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedImages) != 1 || len(rep.DeletedBlobs) != 0 || rep.YoungBlobs != len(blobsOf(v1)) {
		t.Fatalf("first GC: %+v", rep)
	}
	mustVerifyClean(t, s)
	later := time.Now().Add(2 * time.Hour)
	rep, err = s.GC(t.Context(), GCOptions{Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeletedBlobs) != len(blobsOf(v1)) {
		t.Errorf("second GC deleted %v, want the %d blobs of v1", rep.DeletedBlobs, len(blobsOf(v1)))
	}
}
