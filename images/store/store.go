// Package store keeps imgctl images in a local OCI image layout directory that never lies:
// blobs appear only once verified, and index.json changes atomically under a cross-process lock.
package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/layers/atomicfile"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultDir is where the imgctl CLI keeps its store unless told otherwise.
const DefaultDir = ".imgctl/store"

// ServeDir is the directory of a store where imgctl serve keeps its state (the boot credential
// key, each node's boot record, the boot reports), so that replicas on one store agree. OCI
// tools ignore it.
const ServeDir = "serve"

// Errors callers branch on. Returned errors wrap them, so test with errors.Is.
var (
	// ErrNotFound: no such blob or image.
	ErrNotFound = errors.New("not found")
	// ErrAmbiguous: a reference matches more than one image.
	ErrAmbiguous = errors.New("ambiguous reference")
	// ErrDigestMismatch: content does not match its expected digest or size.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrConflict: a version already names a different image.
	ErrConflict = errors.New("conflict")
)

// Names inside the layout directory. ingest and the lock file are ours; other OCI tools
// ignore them (the layout spec allows extra files).
const (
	layoutFile   = ocispec.ImageLayoutFile // oci-layout
	indexFile    = ocispec.ImageIndexFile  // index.json
	blobsDir     = ocispec.ImageBlobsDir   // blobs
	ingestDir    = "ingest"
	lockFile     = "index.json.lock"
	staleTempAge = time.Hour
)

// Store is an OCI image layout directory. It is safe for concurrent use by goroutines and by
// several processes sharing the directory.
type Store struct {
	dir string
	log *slog.Logger
	// sem serializes index updates inside this process, so goroutines wait on a channel (which
	// honours ctx) rather than spin on the file lock.
	sem chan struct{}
}

// Open opens the OCI image layout at dir, creating it (and dir) if missing. A directory that
// is neither empty nor a layout is rejected with an error that says why. Temporary files older
// than an hour, left by writers that died, are removed.
func Open(ctx context.Context, dir string, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	s := &Store{dir: dir, log: logger, sem: make(chan struct{}, 1)}

	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating store: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("opening store: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("opening store: %s is not a directory", dir)
	}

	ok, err := s.checkLayout()
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := s.create(ctx); err != nil {
			return nil, err
		}
	}
	if err := s.cleanTemps(time.Now().Add(-staleTempAge)); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir is the layout directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// checkLayout reports whether dir is a complete layout. It returns an error for a directory
// that is not a layout and not empty, or whose layout files are broken.
func (s *Store) checkLayout() (complete bool, err error) {
	data, err := os.ReadFile(s.path(layoutFile))
	if errors.Is(err, fs.ErrNotExist) {
		entries, err := os.ReadDir(s.dir)
		if err != nil {
			return false, fmt.Errorf("opening store: %w", err)
		}
		for _, e := range entries {
			// Our own files may already exist if another process is creating the layout now.
			switch e.Name() {
			case ingestDir, lockFile, blobsDir, indexFile:
				continue
			}
			return false, fmt.Errorf("opening store: %s is not an OCI image layout: it has no %s file and is not empty (it holds %q)",
				s.dir, layoutFile, e.Name())
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening store: %w", err)
	}
	var l ocispec.ImageLayout
	if err := json.Unmarshal(data, &l); err != nil {
		return false, fmt.Errorf("opening store: %s is not an OCI image layout: %s: %w", s.dir, layoutFile, err)
	}
	if l.Version != ocispec.ImageLayoutVersion {
		return false, fmt.Errorf("opening store: %s: unsupported imageLayoutVersion %q (want %q)",
			s.path(layoutFile), l.Version, ocispec.ImageLayoutVersion)
	}
	if _, err := s.readIndex(); errors.Is(err, fs.ErrNotExist) {
		return false, nil // create makes it, unless blobs are there
	} else if err != nil {
		return false, fmt.Errorf("opening store: %w", s.lostIndex(err))
	}
	for _, d := range []string{s.path(blobsDir, "sha256"), s.path(ingestDir)} {
		if _, err := os.Stat(d); err != nil {
			return false, nil
		}
	}
	return true, nil
}

// create makes the missing parts of the layout under the index lock, so that concurrent
// Opens of a new directory agree.
func (s *Store) create(ctx context.Context) error {
	for _, d := range []string{s.path(ingestDir), s.path(blobsDir, "sha256")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating store: %w", err)
		}
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return fmt.Errorf("creating store: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(s.path(indexFile)); errors.Is(err, fs.ErrNotExist) {
		// A new store has no blobs. Blobs without an index mean the index was lost: an empty
		// one would orphan every image, and gc would delete them all.
		if n, err := s.countBlobs(); err != nil {
			return fmt.Errorf("opening store: %w", err)
		} else if n > 0 {
			return fmt.Errorf("opening store: %w", s.lostIndex(fmt.Errorf("reading index: %w", fs.ErrNotExist)))
		}
		idx := ocispec.Index{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageIndex,
			Manifests: []ocispec.Descriptor{},
		}
		if err := s.writeIndex(idx); err != nil {
			return fmt.Errorf("creating store: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("creating store: %w", err)
	}
	// oci-layout last: its presence says the layout is complete.
	if _, err := os.Stat(s.path(layoutFile)); errors.Is(err, fs.ErrNotExist) {
		data, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := s.writeFileAtomic(layoutFile, data); err != nil {
			return fmt.Errorf("creating store: %w", err)
		}
		s.log.Info("created store", "dir", s.dir)
	} else if err != nil {
		return fmt.Errorf("creating store: %w", err)
	}
	return nil
}

// cleanTemps removes files in ingest last modified before cutoff: leftovers of writers that
// died. Writers that are alive touch their file as they write.
func (s *Store) cleanTemps(cutoff time.Time) error {
	entries, err := os.ReadDir(s.path(ingestDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleaning temporary files: %w", err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cleaning temporary files: %w", err)
		}
		if info.ModTime().After(cutoff) {
			continue
		}
		p := s.path(ingestDir, e.Name())
		if err := os.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cleaning temporary files: %w", err)
		}
		s.log.Info("removed stale temporary file", "path", p, "modified", info.ModTime())
	}
	return nil
}

// writeFileAtomic replaces dir/name with data (temp in ingest, fsync, rename, fsync dir).
func (s *Store) writeFileAtomic(name string, data []byte) error {
	return atomicfile.Write(s.path(ingestDir), s.path(name), data, 0o644)
}

// readIndex reads index.json. Writers replace it atomically, so no lock is needed to read.
func (s *Store) readIndex() (ocispec.Index, error) {
	data, err := os.ReadFile(s.path(indexFile))
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("reading index: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return ocispec.Index{}, fmt.Errorf("reading index: %s is %w", s.path(indexFile), errIndexEmpty)
	}
	var idx ocispec.Index
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&idx); err != nil {
		return ocispec.Index{}, fmt.Errorf("reading index: %s: %w", s.path(indexFile), err)
	}
	if idx.SchemaVersion != 2 {
		return ocispec.Index{}, fmt.Errorf("reading index: %s: schemaVersion %d, want 2", s.path(indexFile), idx.SchemaVersion)
	}
	return idx, nil
}

// errIndexEmpty: index.json has no content at all.
var errIndexEmpty = errors.New("empty")

// countBlobs returns the number of entries in the blobs/ algorithm directories.
func (s *Store) countBlobs() (int, error) {
	algs, err := os.ReadDir(s.path(blobsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("counting blobs: %w", err)
	}
	n := 0
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		es, err := os.ReadDir(s.path(blobsDir, a.Name()))
		if err != nil {
			return 0, fmt.Errorf("counting blobs: %w", err)
		}
		n += len(es)
	}
	return n, nil
}

// lostIndex explains err, readIndex's failure, for a store that may hold blobs: with no index
// to say which blobs are images, nothing may go on as if the store were empty.
func (s *Store) lostIndex(err error) error {
	n, cerr := s.countBlobs()
	if cerr != nil || n == 0 {
		return err
	}
	var state string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		state = "is missing"
	case errors.Is(err, errIndexEmpty):
		state = "is empty"
	default:
		state = fmt.Sprintf("is unreadable (%v)", err)
	}
	return fmt.Errorf("%s %s but %s holds %d blobs: refusing to go on, since an empty index would orphan them all "+
		"(and gc would delete them); restore index.json (e.g. from a backup), or move %s aside to start an empty store",
		s.path(indexFile), state, s.path(blobsDir), n, s.dir)
}

func (s *Store) writeIndex(idx ocispec.Index) error {
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding index: %w", err)
	}
	if err := s.writeFileAtomic(indexFile, append(data, '\n')); err != nil {
		return fmt.Errorf("writing index: %w", err)
	}
	return nil
}

// updateIndex runs fn on the current index under the exclusive lock and writes the result if
// fn reports a change: a read-modify-write that concurrent processes cannot interleave.
func (s *Store) updateIndex(ctx context.Context, fn func(*ocispec.Index) (bool, error)) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	changed, err := fn(&idx)
	if err != nil || !changed {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.writeIndex(idx)
}
