package cache

import (
	"github.com/imgctl/imgctl/layers/atomicfile"

	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

var errWriterDone = errors.New("cache: writer already committed, aborted or closed")

// Writer streams a new blob into the cache. Nothing is visible under blobs/
// until Commit has verified the content; a killed process leaves only a temp
// file under tmp/ (see Clean). A Writer is not safe for concurrent use.
type Writer struct {
	c       *Cache
	ctx     context.Context
	f       *os.File
	path    string
	h       hash.Hash
	n       int64
	partial bool
	done    bool
}

// NewWriter starts a blob in a fresh temp file under tmp/.
func (c *Cache) NewWriter(ctx context.Context) (*Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cache: new writer: %w", context.Cause(ctx))
	}
	f, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "blob-*")
	if err != nil {
		return nil, fmt.Errorf("cache: new writer: %w", err)
	}
	return &Writer{c: c, ctx: ctx, f: f, path: f.Name(), h: sha256.New()}, nil
}

// OpenPartial opens the resumable partial file for blob d (PartialPath(d)), creating
// it if needed. Existing content is re-hashed and kept: Size reports how many bytes
// are already there and Write appends. Close keeps the data for a later resume,
// Abort deletes it, Reset starts over and Commit moves it into the cache.
// The caller must hold Lock for d (one writer per partial file).
func (c *Cache) OpenPartial(ctx context.Context, d digest.Digest) (*Writer, error) {
	if err := checkDigest(d); err != nil {
		return nil, fmt.Errorf("cache: open partial: %w", err)
	}
	p := c.PartialPath(d)
	if err := os.MkdirAll(filepath.Dir(p), dirPerm); err != nil {
		return nil, fmt.Errorf("cache: open partial: %w", err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: open partial: %w", err)
	}
	w := &Writer{c: c, ctx: ctx, f: f, path: p, h: sha256.New(), partial: true}
	n, err := copyCtx(ctx, w.h, f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: open partial %s: %w", p, err)
	}
	w.n = n
	if _, err := f.Seek(n, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache: open partial %s: %w", p, err)
	}
	return w, nil
}

// Write appends p to the blob and hashes it.
func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errWriterDone
	}
	if err := w.ctx.Err(); err != nil {
		return 0, context.Cause(w.ctx)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("cache: write %s: %w", w.path, err)
	}
	return n, nil
}

// Size returns the number of bytes written so far (including resumed partial data).
func (w *Writer) Size() int64 { return w.n }

// Digest returns the sha256 digest of the bytes written so far.
func (w *Writer) Digest() digest.Digest { return digest.NewDigest(digest.SHA256, w.h) }

// Reset discards everything written so far and starts again at offset 0.
func (w *Writer) Reset() error {
	if w.done {
		return errWriterDone
	}
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("cache: reset %s: %w", w.path, err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("cache: reset %s: %w", w.path, err)
	}
	w.h.Reset()
	w.n = 0
	return nil
}

// Commit verifies the content against expected ("" accepts the computed digest) and
// expectedSize (-1 accepts any), fsyncs it and renames it into blobs/sha256/<hex>.
// On a mismatch the temp file is removed, nothing becomes visible, and the error
// wraps ErrDigestMismatch or ErrSizeMismatch and names expected and actual values.
// Committing a blob that already exists succeeds and discards the temp file.
func (w *Writer) Commit(expected digest.Digest, expectedSize int64) (digest.Digest, int64, error) {
	if w.done {
		return "", 0, errWriterDone
	}
	if expected != "" {
		if err := checkDigest(expected); err != nil {
			w.Abort()
			return "", 0, fmt.Errorf("cache: commit: %w", err)
		}
	}
	if err := w.ctx.Err(); err != nil {
		w.Abort()
		return "", 0, fmt.Errorf("cache: commit: %w", context.Cause(w.ctx))
	}
	actual, n := w.Digest(), w.n
	if expectedSize >= 0 && n != expectedSize {
		w.Abort()
		return "", 0, fmt.Errorf("cache: commit: %w: expected %d bytes, got %d (%s)", ErrSizeMismatch, expectedSize, n, actual)
	}
	if expected != "" && actual != expected {
		w.Abort()
		return "", 0, fmt.Errorf("cache: commit: %w: expected %s, got %s (%d bytes)", ErrDigestMismatch, expected, actual, n)
	}
	dst, _ := w.c.blobPath(actual)
	if w.c.Has(actual) {
		w.Abort()
		return actual, n, nil
	}
	w.done = true
	err := w.f.Chmod(blobPerm)
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(w.path, dst)
	}
	if err != nil {
		os.Remove(w.path)
		return "", 0, fmt.Errorf("cache: commit %s: %w", actual, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return "", 0, fmt.Errorf("cache: commit %s: sync directory: %w", actual, err)
	}
	w.c.log.Debug("cache: committed blob", "digest", actual, "size", n)
	return actual, n, nil
}

// Abort discards the writer and deletes its file (the partial data too, for
// OpenPartial writers). It is a no-op after Commit, Abort or Close.
func (w *Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: abort: %w", err)
	}
	return nil
}

// Close releases the writer without committing. An OpenPartial writer keeps its
// data for a later resume; a NewWriter writer deletes its temp file (like Abort).
func (w *Writer) Close() error {
	if !w.partial {
		return w.Abort()
	}
	if w.done {
		return nil
	}
	w.done = true
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("cache: close %s: %w", w.path, err)
	}
	return nil
}
