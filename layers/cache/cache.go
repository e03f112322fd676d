// Package cache is imgctl's shared content-addressed blob cache (default ~/.cache/imgctl).
// Writes are temp + fsync + rename and locks are flock(2), so concurrent builds in several processes may share one cache.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/layers/atomicfile"

	"github.com/imgctl/imgctl/layers/flock"
	"github.com/opencontainers/go-digest"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound: the blob or ref is not in the cache.
	ErrNotFound = errors.New("not found in cache")
	// ErrInvalidDigest: the digest is malformed or not sha256.
	ErrInvalidDigest = errors.New("invalid digest (want sha256:<64 hex>)")
	// ErrDigestMismatch: content does not hash to the expected digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: content does not have the expected size.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrCorrupt: a cached blob no longer matches its digest (it has been removed).
	ErrCorrupt = errors.New("corrupt blob")
)

const (
	dirPerm  = 0o755
	blobPerm = 0o444
	refPerm  = 0o644
	lockPerm = 0o644
)

// Cache is a content-addressed store rooted at a directory:
//
//	blobs/sha256/<hex>   immutable blobs, named by their sha256
//	refs/<kind>/<hash>   small key -> digest maps (hash = sha256(key))
//	tmp/                 temp files of writers in progress (see Clean)
//	tmp/partial/<hex>    resumable partial downloads (see OpenPartial)
//	locks/<hash>         flock(2) lock files (hash = sha256(key))
//
// A Cache is safe for concurrent use by goroutines and by processes.
type Cache struct {
	dir string
	log *slog.Logger
}

// DefaultDir returns the default cache directory: $XDG_CACHE_HOME/imgctl,
// usually ~/.cache/imgctl.
func DefaultDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache: default directory: %w", err)
	}
	return filepath.Join(d, "imgctl"), nil
}

// Open opens (creating as needed) the cache rooted at dir.
func Open(dir string, logger *slog.Logger) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("cache: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{dir: abs, log: logger}
	for _, sub := range []string{
		filepath.Join("blobs", "sha256"), "refs", "tmp", filepath.Join("tmp", "partial"), "locks",
	} {
		if err := os.MkdirAll(filepath.Join(abs, sub), dirPerm); err != nil {
			return nil, fmt.Errorf("cache: open %s: %w", abs, err)
		}
	}
	return c, nil
}

// Dir returns the absolute root directory of the cache.
func (c *Cache) Dir() string { return c.dir }

func checkDigest(d digest.Digest) error {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%w: %q", ErrInvalidDigest, string(d))
	}
	return nil
}

func (c *Cache) blobPath(d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return filepath.Join(c.dir, "blobs", "sha256", d.Encoded()), nil
}

// Has reports whether blob d is in the cache. Invalid digests are never present.
func (c *Cache) Has(d digest.Digest) bool {
	p, err := c.blobPath(d)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Path returns the file path of blob d, or an error wrapping ErrNotFound.
// The file must be treated as read-only.
func (c *Cache) Path(d digest.Digest) (string, error) {
	p, err := c.blobPath(d)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("blob %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("blob %s: not a regular file", d)
	}
	return p, nil
}

// Open opens blob d for reading, or returns an error wrapping ErrNotFound.
func (c *Cache) Open(d digest.Digest) (*os.File, error) {
	p, err := c.blobPath(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	return f, nil
}

// Verify re-hashes blob d. If the content does not match, the blob is removed
// and the error wraps ErrCorrupt and names the digests.
func (c *Cache) Verify(ctx context.Context, d digest.Digest) error {
	f, err := c.Open(d)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = copyCtx(ctx, h, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("verify blob %s: %w", d, err)
	}
	actual := digest.NewDigest(digest.SHA256, h)
	if actual == d {
		return nil
	}
	p, _ := c.blobPath(d)
	rmErr := os.Remove(p)
	if rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		c.log.Warn("cache: cannot remove corrupt blob", "digest", d, "err", rmErr)
	}
	c.log.Warn("cache: removed corrupt blob", "digest", d, "actual", actual)
	return fmt.Errorf("blob %s: %w: content hashes to %s (removed from cache)", d, ErrCorrupt, actual)
}

// PartialPath is where a resumable download of blob d keeps its partial data
// (tmp/partial/<hex>). Callers may keep sidecar files next to it (PartialPath+".suffix");
// Clean removes them once stale. An invalid d maps to a hash of its text, never outside tmp/partial.
func (c *Cache) PartialPath(d digest.Digest) string {
	enc := keyHash(string(d))
	if checkDigest(d) == nil {
		enc = d.Encoded()
	}
	return filepath.Join(c.dir, "tmp", "partial", enc)
}

// Lock takes an exclusive lock named key, shared by every process using this cache
// directory (flock on locks/<sha256(key)>). It polls until the lock is free or ctx is done.
// The returned unlock is idempotent.
func (c *Cache) Lock(ctx context.Context, key string) (unlock func() error, err error) {
	p := filepath.Join(c.dir, "locks", keyHash(key))
	unlockFile, err := flock.Lock(ctx, p, lockPerm, func() {
		c.log.Info("cache: waiting for lock held by another build", "key", key)
	})
	if err != nil {
		return nil, fmt.Errorf("cache: lock %q: %w", key, err)
	}
	return func() error {
		if err := unlockFile(); err != nil {
			return fmt.Errorf("cache: unlock %q: %w", key, err)
		}
		return nil
	}, nil
}

func keyHash(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:])
}

func checkKind(kind string) error {
	if kind == "" || kind == "." || kind == ".." || strings.ContainsAny(kind, `/\`+"\x00") {
		return fmt.Errorf("cache: invalid ref kind %q", kind)
	}
	return nil
}

// Ref returns the digest stored for (kind, key), or an error wrapping ErrNotFound.
// The blob it names may have been removed since; check Has.
func (c *Cache) Ref(kind, key string) (digest.Digest, error) {
	if err := checkKind(kind); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "refs", kind, keyHash(key)))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("ref %s %q: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("ref %s %q: %w", kind, key, err)
	}
	first, rest, _ := strings.Cut(string(b), "\n")
	d := digest.Digest(first)
	if err := checkDigest(d); err != nil {
		return "", fmt.Errorf("ref %s %q: corrupt ref file: %w", kind, key, err)
	}
	if stored := strings.TrimSuffix(rest, "\n"); stored != key {
		return "", fmt.Errorf("ref %s %q: ref file holds key %q: %w", kind, key, stored, ErrNotFound)
	}
	return d, nil
}

// SetRef atomically stores d for (kind, key) as refs/<kind>/<sha256(key)>
// containing the digest, a newline and the key.
func (c *Cache) SetRef(kind, key string, d digest.Digest) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("ref %s %q: %w", kind, key, err)
	}
	dir := filepath.Join(c.dir, "refs", kind)
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("ref %s %q: %w", kind, key, err)
	}
	if err := atomicfile.Write(filepath.Join(c.dir, "tmp"), filepath.Join(dir, keyHash(key)),
		[]byte(string(d)+"\n"+key+"\n"), refPerm); err != nil {
		return fmt.Errorf("ref %s %q: %w", kind, key, err)
	}
	return nil
}

// Clean removes temp files and partial downloads (tmp/, tmp/partial/) not modified
// for olderThan, such as those left by a killed build. Writers in progress keep
// their files fresh, so pick olderThan well above any expected stall.
func (c *Cache) Clean(ctx context.Context, olderThan time.Duration) error {
	cutoff := time.Now().Add(-olderThan)
	removed := 0
	var errs []error
	for _, dir := range []string{filepath.Join(c.dir, "tmp"), filepath.Join(c.dir, "tmp", "partial")} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("cache: clean: %w", err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("cache: clean: %w", context.Cause(ctx))
			}
			if e.IsDir() {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue // removed concurrently
			}
			if !fi.ModTime().Before(cutoff) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			removed++
			c.log.Debug("cache: removed stale temp file", "path", p, "modified", fi.ModTime())
		}
	}
	if removed > 0 {
		c.log.Info("cache: cleaned stale temp files", "count", removed)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cache: clean: %w", err)
	}
	return nil
}

// copyCtx copies src to dst, checking ctx between chunks.
func copyCtx(ctx context.Context, dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, context.Cause(ctx)
		}
		r, err := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
