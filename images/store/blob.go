package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/layers/atomicfile"

	digest "github.com/opencontainers/go-digest"
)

// copyBufSize is the buffer for streaming blobs: large enough that syscalls do not dominate.
const copyBufSize = 1 << 20

// blobPath is where a sha256 blob lives. It validates d, so no digest can name a path outside
// blobs/sha256.
func (s *Store) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %w", d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("digest %s: unsupported algorithm %s (the store holds sha256 blobs)", d, d.Algorithm())
	}
	return s.path(blobsDir, "sha256", d.Encoded()), nil
}

// HasBlob reports whether the store holds the blob d.
func (s *Store) HasBlob(d digest.Digest) bool {
	p, err := s.blobPath(d)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// blobSize returns the size of blob d, or an error wrapping ErrNotFound.
func (s *Store) blobSize(d digest.Digest) (int64, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", d, err)
	}
	return fi.Size(), nil
}

// BlobWriter streams a new blob into the store. Nothing is visible until Commit has checked
// its size and digest; Abort (or a failed Commit) discards it.
type BlobWriter struct {
	s    *Store
	f    *os.File
	h    hash.Hash
	n    int64
	done bool
}

// NewBlobWriter starts a blob. Call Commit or Abort.
func (s *Store) NewBlobWriter(ctx context.Context) (*BlobWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.path(ingestDir), "blob-*")
	if err != nil {
		return nil, fmt.Errorf("starting blob: %w", err)
	}
	return &BlobWriter{s: s, f: f, h: digest.SHA256.Hash()}, nil
}

// Write appends p to the blob.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("blob writer: write after commit or abort")
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("writing blob: %w", err)
	}
	return n, nil
}

// Size is the number of bytes written so far.
func (w *BlobWriter) Size() int64 { return w.n }

// Commit makes the blob visible once it is verified: expectedSize (-1 for any) and expected
// (the empty digest to compute it) must match what was written, else the blob is discarded and
// the error wraps ErrDigestMismatch. The data is fsynced before the rename that publishes it,
// and the directory after. Committing a blob the store already holds is not an error.
func (w *BlobWriter) Commit(ctx context.Context, expectedSize int64, expected digest.Digest) (digest.Digest, int64, error) {
	if w.done {
		return "", 0, errors.New("blob writer: already committed or aborted")
	}
	defer w.Abort() // a no-op after a successful rename
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	if expected != "" {
		if _, err := w.s.blobPath(expected); err != nil {
			return "", 0, fmt.Errorf("committing blob: %w", err)
		}
	}
	if expectedSize >= 0 && w.n != expectedSize {
		return "", 0, fmt.Errorf("committing blob: wrote %d bytes, expected %d: %w", w.n, expectedSize, ErrDigestMismatch)
	}
	d := digest.NewDigest(digest.SHA256, w.h)
	if expected != "" && d != expected {
		return "", 0, fmt.Errorf("committing blob: content is %s, expected %s: %w", d, expected, ErrDigestMismatch)
	}
	final, _ := w.s.blobPath(d)
	if err := w.f.Chmod(0o444); err != nil {
		return "", 0, fmt.Errorf("committing blob %s: %w", d, err)
	}
	if err := w.f.Sync(); err != nil {
		return "", 0, fmt.Errorf("committing blob %s: %w", d, err)
	}
	if err := w.f.Close(); err != nil {
		return "", 0, fmt.Errorf("committing blob %s: %w", d, err)
	}
	// An existing blob is reused: TouchBlob makes GC spare it (and fails if GC just took it).
	if fi, err := os.Stat(final); err == nil && fi.Size() == w.n && w.s.TouchBlob(d) == nil {
		w.s.log.Debug("blob already present", "digest", d, "size", w.n)
		return d, w.n, nil
	}
	if err := os.Rename(w.f.Name(), final); err != nil {
		return "", 0, fmt.Errorf("committing blob %s: %w", d, err)
	}
	w.done = true
	if err := atomicfile.SyncDir(filepath.Dir(final)); err != nil {
		return "", 0, fmt.Errorf("committing blob %s: %w", d, err)
	}
	w.s.log.Debug("committed blob", "digest", d, "size", w.n)
	return d, w.n, nil
}

// Abort discards the blob. It is safe to call after Commit.
func (w *BlobWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	_ = w.f.Close()
	_ = os.Remove(w.f.Name())
}

// WriteBlob stores everything r yields as one blob, verified as by BlobWriter.Commit. When the
// expected digest is already stored (with the expected size), r is not read.
func (s *Store) WriteBlob(ctx context.Context, r io.Reader, expectedSize int64, expected digest.Digest) (digest.Digest, int64, error) {
	if expected != "" {
		if n, err := s.blobSize(expected); err == nil && (expectedSize < 0 || n == expectedSize) && s.TouchBlob(expected) == nil {
			return expected, n, nil
		}
	}
	w, err := s.NewBlobWriter(ctx)
	if err != nil {
		return "", 0, err
	}
	defer w.Abort()
	buf := make([]byte, copyBufSize)
	if _, err := io.CopyBuffer(w, ctxReader{ctx, r}, buf); err != nil {
		return "", 0, fmt.Errorf("writing blob: %w", err)
	}
	return w.Commit(ctx, expectedSize, expected)
}

// LinkBlob adds the file at path (e.g. a cache entry) as blob d: by hard link when path is on
// the store's filesystem, else by copying. Either way the content is hashed first and a
// mismatch wraps ErrDigestMismatch.
func (s *Store) LinkBlob(ctx context.Context, path string, d digest.Digest) error {
	final, err := s.blobPath(d)
	if err != nil {
		return fmt.Errorf("linking blob: %w", err)
	}
	if s.HasBlob(d) && s.TouchBlob(d) == nil {
		return nil
	}
	if err := s.linkBlob(ctx, path, d, final); err == nil {
		return nil
	} else if errors.Is(err, ErrDigestMismatch) || ctx.Err() != nil {
		return err
	} else {
		s.log.Debug("hard link failed, copying", "path", path, "err", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("linking blob %s: %w", d, err)
	}
	defer func() { _ = f.Close() }()
	if _, _, err := s.WriteBlob(ctx, f, -1, d); err != nil {
		return fmt.Errorf("linking blob %s from %s: %w", d, path, err)
	}
	return nil
}

// linkBlob hard-links path to a temporary name, hashes that (the inode we will publish, not
// the path, which could be replaced meanwhile), and renames it into place.
func (s *Store) linkBlob(ctx context.Context, path string, d digest.Digest, final string) error {
	_, _, err := s.link(ctx, path, d, final)
	return err
}

// AddFile adds the file at path (written by the caller, e.g. in TempDir) as a blob under its
// digest, by hard link when it is on the store's filesystem, hashing it once. The caller may
// remove path afterwards.
func (s *Store) AddFile(ctx context.Context, path string) (digest.Digest, int64, error) {
	d, n, err := s.link(ctx, path, "", "")
	if err == nil {
		return d, n, nil
	}
	if ctx.Err() != nil {
		return "", 0, err
	}
	s.log.Debug("hard link failed, copying", "path", path, "err", err)
	f, ferr := os.Open(path)
	if ferr != nil {
		return "", 0, fmt.Errorf("adding %s: %w", path, ferr)
	}
	defer func() { _ = f.Close() }()
	return s.WriteBlob(ctx, f, -1, "")
}

// TempDir creates a directory for work that will become blobs (see AddFile). It lives in the
// store's ingest area, so stale ones are removed like other temp files.
func (s *Store) TempDir(pattern string) (string, error) {
	return os.MkdirTemp(s.path(ingestDir), pattern)
}

// link hard-links path into the ingest area, hashes it, and renames it to its blob path. With
// d empty the computed digest is accepted; final may be empty to derive it.
func (s *Store) link(ctx context.Context, path string, d digest.Digest, final string) (digest.Digest, int64, error) {
	f, err := os.CreateTemp(s.path(ingestDir), "link-*")
	if err != nil {
		return "", 0, err
	}
	tmp := f.Name()
	_ = f.Close()
	_ = os.Remove(tmp)
	if err := os.Link(path, tmp); err != nil {
		return "", 0, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	lf, err := os.Open(tmp)
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = lf.Close() }()
	h := digest.SHA256.Digester()
	n, err := io.CopyBuffer(h.Hash(), ctxReader{ctx, lf}, make([]byte, copyBufSize))
	if err != nil {
		return "", 0, fmt.Errorf("linking blob %s: hashing %s: %w", d, path, err)
	}
	got := h.Digest()
	if d != "" && got != d {
		return "", 0, fmt.Errorf("linking blob: %s is %s, expected %s: %w", path, got, d, ErrDigestMismatch)
	}
	if final == "" {
		if final, err = s.blobPath(got); err != nil {
			return "", 0, err
		}
	}
	if err := lf.Sync(); err != nil {
		return "", 0, err
	}
	if err := os.Chmod(tmp, 0o444); err != nil { // blobs are immutable
		return "", 0, err
	}
	// A link keeps the source's old mtime: make the blob young, so GC spares it until indexed.
	if now := time.Now(); os.Chtimes(tmp, now, now) != nil {
		s.log.Debug("cannot refresh linked blob's modification time", "path", path)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", 0, err
	}
	ok = true
	if err := atomicfile.SyncDir(filepath.Dir(final)); err != nil {
		return "", 0, fmt.Errorf("linking blob %s: %w", got, err)
	}
	s.log.Debug("linked blob", "digest", got, "from", path)
	return got, n, nil
}

// OpenBlob opens blob d for reading. The reader hashes what it yields and, at the end, returns
// an error wrapping ErrDigestMismatch instead of io.EOF if the content is not d.
func (s *Store) OpenBlob(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.blobPath(d)
	if err != nil {
		return nil, fmt.Errorf("opening blob: %w", err)
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", d, err)
	}
	return &verifyingReader{f: f, d: d, v: d.Verifier()}, nil
}

type verifyingReader struct {
	f *os.File
	d digest.Digest
	v digest.Verifier
}

func (r *verifyingReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	_, _ = r.v.Write(p[:n])
	if err == io.EOF && !r.v.Verified() {
		return n, fmt.Errorf("blob %s: content does not hash to its name: %w", r.d, ErrDigestMismatch)
	}
	return n, err
}

func (r *verifyingReader) Close() error { return r.f.Close() }

// readBlob reads a small blob (a manifest or config) whole and verifies it. size < 0 means
// any size up to max.
func (s *Store) readBlob(ctx context.Context, d digest.Digest, size, max int64) ([]byte, error) {
	if size > max {
		return nil, fmt.Errorf("blob %s: size %d exceeds %d", d, size, max)
	}
	rc, err := s.OpenBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("blob %s: larger than %d bytes", d, max)
	}
	if size >= 0 && int64(len(data)) != size {
		return nil, fmt.Errorf("blob %s: %d bytes, descriptor says %d: %w", d, len(data), size, ErrDigestMismatch)
	}
	return data, nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// BlobPath is the file holding blob d, for readers that need random access (io.ReaderAt).
// Blobs are immutable: never write through this path.
func (s *Store) BlobPath(d digest.Digest) (string, error) {
	p, err := s.blobPath(d)
	if err != nil {
		return "", err
	}
	if !s.HasBlob(d) {
		return "", fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return p, nil
}
