package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/limits"
	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/opencontainers/go-digest"
)

// RefKind is the cache ref kind under which Fetch records URL -> digest, so that
// an offline Fetch without a pinned digest can still be served from the cache.
const RefKind = "url"

// maxRestarts bounds restarts from offset 0 that do not count as attempts
// (server ignored Range, changed validators, bad Content-Range, 416).
const maxRestarts = 3

var errRestart = errors.New("partial download cannot be resumed; restarting from 0")

// Fetch makes the content of url available in ca and returns its digest.
//
// If expected is set and already cached, Fetch returns at once without touching the
// network. Otherwise it takes ca.Lock (so concurrent builds download once), downloads
// the mirror-rewritten URL into ca.PartialPath, resuming an earlier partial download
// with Range when the server allows, verifies the sha256 while streaming and commits
// the blob. A digest mismatch fails closed with ErrDigestMismatch: nothing is cached
// and the partial data is deleted. Transient failures (network errors, stalls, 408,
// 429, 5xx) are retried with backoff; other 4xx fail at once (404/410: ErrNotFound).
// When every attempt fails, the error wraps ErrUnreachable and suggests --mirror
// and --offline. With Offline set, cache misses fail with ErrOffline (file:// URLs
// are still read: they are not network).
func (c *Client) Fetch(ctx context.Context, ca *cache.Cache, rawURL string, expected digest.Digest) (digest.Digest, error) {
	if ca == nil {
		return "", fmt.Errorf("fetch %s: nil cache", rawURL)
	}
	if expected != "" {
		if expected.Validate() != nil || expected.Algorithm() != digest.SHA256 {
			return "", fmt.Errorf("fetch %s: invalid digest %q (want sha256:<64 hex>)", rawURL, string(expected))
		}
		if ca.Has(expected) {
			return expected, nil
		}
	}
	target := c.Rewrite(rawURL)
	u, err := checkScheme(target)
	if err != nil {
		return "", err
	}
	log := c.logger()
	if c.Offline && u.Scheme != "file" {
		if expected == "" {
			if d, err := ca.Ref(RefKind, rawURL); err == nil && ca.Has(d) {
				return d, nil
			}
			return "", fmt.Errorf("fetch %s: %w", rawURL, ErrOffline)
		}
		return "", fmt.Errorf("fetch %s (%s): %w", rawURL, expected, ErrOffline)
	}

	key := "fetch-url:" + rawURL
	if expected != "" {
		key = "fetch:" + expected.String()
	}
	unlock, err := ca.Lock(ctx, key)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	defer unlock()
	if expected != "" && ca.Has(expected) {
		log.Debug("fetch: downloaded meanwhile by another build", "url", rawURL, "digest", expected)
		return expected, nil
	}

	p := &progress{fn: c.Progress, url: rawURL, total: -1}
	var d digest.Digest
	if u.Scheme == "file" {
		d, err = c.fetchFile(ctx, ca, rawURL, target, u, expected, p)
	} else {
		d, err = c.fetchHTTP(ctx, ca, rawURL, target, expected, p)
	}
	p.finish(err)
	if err != nil {
		return "", err
	}
	if err := ca.SetRef(RefKind, rawURL, d); err != nil {
		log.Warn("fetch: cannot record URL ref", "url", rawURL, "err", err)
	}
	log.Info("fetch: downloaded", "url", rawURL, "digest", d, "size", p.done)
	return d, nil
}

// tooLarge says what exceeded the per-source size limit; what ends with "over" or "more than".
func tooLarge(what string, limit int64) error {
	return fmt.Errorf("%w: %s the limit of %s per source (--max-source-size); nothing was kept", limits.ErrTooLarge, what, limits.Bytes(limit))
}

func mismatch(expected, actual digest.Digest, n int64) error {
	return fmt.Errorf("%w: expected %s, got %s (%d bytes); nothing was cached", ErrDigestMismatch, expected, actual, n)
}

func filePath(u *url.URL) (string, error) {
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("file URL %s: remote host %q not supported", u, u.Host)
	}
	if u.Opaque != "" {
		return u.Opaque, nil
	}
	return u.Path, nil
}

func openFile(raw, target string, u *url.URL) (*os.File, error) {
	path, err := filePath(u)
	if err != nil {
		return nil, err
	}
	f, _, err := localfile.Open(path) // a FIFO or device is refused, not waited on or read forever
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("fetch %s: %w: %w", where(raw, target), ErrNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", where(raw, target), err)
	}
	return f, nil
}

func (c *Client) fetchFile(ctx context.Context, ca *cache.Cache, raw, target string, u *url.URL, expected digest.Digest, p *progress) (digest.Digest, error) {
	f, err := openFile(raw, target, u)
	if err != nil {
		return "", err
	}
	defer f.Close()
	total := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		total = fi.Size()
	}
	limit := c.Limits.SourceSize()
	if limit >= 0 && total > limit {
		return "", fmt.Errorf("fetch %s: %w", where(raw, target), tooLarge(fmt.Sprintf("%s is %s, over", f.Name(), limits.Bytes(total)), limit))
	}
	w, err := ca.NewWriter(ctx)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", raw, err)
	}
	defer w.Abort() // no-op after Commit
	buf := make([]byte, 256<<10)
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if limit >= 0 && w.Size()+int64(n) > limit {
				return "", fmt.Errorf("fetch %s: %w", where(raw, target), tooLarge(f.Name()+" holds more than", limit))
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return "", fmt.Errorf("fetch %s: %w", where(raw, target), err)
			}
			p.update(w.Size(), total)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", fmt.Errorf("fetch %s: %w", where(raw, target), rerr)
		}
	}
	p.update(w.Size(), total)
	if expected != "" && w.Digest() != expected {
		return "", fmt.Errorf("fetch %s: %w", where(raw, target), mismatch(expected, w.Digest(), w.Size()))
	}
	d, _, err := w.Commit(expected, -1)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", raw, err)
	}
	return d, nil
}

// sidecar records what a partial download came from, to decide whether it can be resumed.
type sidecar struct {
	URL          string `json:"url"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"lastModified,omitempty"`
}

func readSidecar(path string) *sidecar {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var s sidecar
	if json.Unmarshal(b, &s) != nil || s.URL == "" {
		return nil
	}
	return &s
}

func writeSidecar(path string, s *sidecar) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	err = os.WriteFile(tmp, b, 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func (s *sidecar) strongETag() string {
	if s == nil || s.ETag == "" || strings.HasPrefix(s.ETag, "W/") {
		return ""
	}
	return s.ETag
}

func (c *Client) fetchHTTP(ctx context.Context, ca *cache.Cache, raw, target string, expected digest.Digest, p *progress) (digest.Digest, error) {
	log := c.logger()
	key := expected
	if key == "" {
		key = digest.FromString("url:" + raw)
	}
	w, err := ca.OpenPartial(ctx, key)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", raw, err)
	}
	metaPath := ca.PartialPath(key) + ".meta"
	defer func() {
		// Keep partial data for a later resume; drop empty leftovers. No-op after Commit/Abort.
		if w.Size() == 0 {
			w.Abort()
			os.Remove(metaPath)
		} else {
			w.Close()
		}
	}()
	sc := readSidecar(metaPath)
	if w.Size() > 0 {
		log.Info("fetch: found partial download", "url", target, "bytes", w.Size())
	}

	restarts := 0
	freshRetry := false
	err = c.retry(ctx, raw, target, func(ctx context.Context) error {
		for {
			resumedFrom, err := c.tryRange(ctx, w, target, metaPath, &sc, expected != "", p)
			if errors.Is(err, errRestart) && restarts < maxRestarts {
				restarts++
				continue
			}
			if err != nil {
				return err
			}
			if expected != "" && w.Digest() != expected {
				if resumedFrom > 0 && !freshRetry {
					// The server's content may have changed under an old partial: try once from scratch.
					freshRetry = true
					log.Warn("fetch: digest mismatch after resume; downloading again from 0", "url", target)
					if err := w.Reset(); err != nil {
						return err
					}
					sc = nil
					continue
				}
				return mismatch(expected, w.Digest(), w.Size())
			}
			return nil
		}
	})
	if err != nil {
		// Keep the partial data only after a genuine interruption (every attempt failed
		// transiently, or the build was cancelled), for a later Range resume: it is at most
		// the size limit and is verified against the pin (or validators) when resumed.
		// A body over the limit, a mismatch, a 4xx or a local error deletes it.
		if !errors.Is(err, ErrUnreachable) && ctx.Err() == nil {
			w.Abort()
			os.Remove(metaPath)
		}
		return "", err
	}
	d, _, err := w.Commit(expected, -1)
	os.Remove(metaPath)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", where(raw, target), err)
	}
	return d, nil
}

// tryRange runs one HTTP attempt, appending to w (resuming from w.Size() when possible).
// It returns the offset the data was resumed from (0 for a full download).
//
// Without a pinned digest, only validators (ETag, Last-Modified) of the same URL
// protect a resume from mixing two versions of the file; otherwise it restarts.
func (c *Client) tryRange(ctx context.Context, w *cache.Writer, target, metaPath string, scp **sidecar, pinned bool, p *progress) (int64, error) {
	log := c.logger()
	a := c.startAttempt(ctx)
	defer a.end()
	sc := *scp
	sameURL := sc != nil && sc.URL == target
	offset := w.Size()
	if offset > 0 && !pinned && !(sameURL && (sc.strongETag() != "" || sc.LastModified != "")) {
		log.Info("fetch: cannot safely resume (no pinned digest, no validators); restarting from 0", "url", target)
		if err := w.Reset(); err != nil {
			return 0, err
		}
		offset = 0
	}
	hdr := http.Header{}
	if offset > 0 {
		hdr.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		if sameURL {
			if et := sc.strongETag(); et != "" {
				hdr.Set("If-Range", et)
			} else if sc.LastModified != "" {
				hdr.Set("If-Range", sc.LastModified)
			}
		}
	}
	resp, err := c.do(ctx, a, target, hdr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()

	restart := func(why string) (int64, error) {
		log.Info("fetch: restarting download from 0", "url", target, "reason", why)
		if err := w.Reset(); err != nil {
			return 0, err
		}
		os.Remove(metaPath)
		*scp = nil
		return 0, transient(fmt.Errorf("%w: %s", errRestart, why))
	}

	total := int64(-1)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, tot, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if offset == 0 || !ok || start != offset {
			return restart(fmt.Sprintf("unexpected Content-Range %q for offset %d", resp.Header.Get("Content-Range"), offset))
		}
		if sameURL && validatorsChanged(sc, resp.Header) {
			return restart("ETag or Last-Modified changed")
		}
		total = tot
		log.Debug("fetch: resumed", "url", target, "offset", offset)
	case http.StatusRequestedRangeNotSatisfiable:
		return restart("range not satisfiable")
	default:
		if offset > 0 {
			log.Info("fetch: server sent the whole file; restarting from 0", "url", target, "status", resp.Status)
			if err := w.Reset(); err != nil {
				return 0, err
			}
			offset = 0
		}
		if resp.ContentLength >= 0 {
			total = resp.ContentLength
		}
		nsc := &sidecar{URL: target, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
		if err := writeSidecar(metaPath, nsc); err != nil {
			log.Warn("fetch: cannot write partial download metadata", "path", metaPath, "err", err)
		}
		*scp = nsc
	}

	limit := c.Limits.SourceSize()
	if limit >= 0 && total > limit {
		return offset, tooLarge(fmt.Sprintf("%s declares %s, over", target, limits.Bytes(total)), limit)
	}
	p.update(w.Size(), total)
	buf := make([]byte, 256<<10)
	a.watchRate()
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			a.touch(n)
			if limit >= 0 && w.Size()+int64(n) > limit {
				return offset, tooLarge(target+" sent more than", limit)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				if ctx.Err() != nil {
					return offset, context.Cause(ctx)
				}
				return offset, err
			}
			p.update(w.Size(), total)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return offset, a.classify(ctx, rerr)
		}
	}
	p.update(w.Size(), total)
	if total >= 0 && w.Size() != total {
		if w.Size() > total {
			return restart(fmt.Sprintf("got %d bytes, more than the %d announced", w.Size(), total))
		}
		return offset, transient(fmt.Errorf("short body: got %d of %d bytes", w.Size(), total))
	}
	return offset, nil
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*": -1).
func parseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	s, e, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(s, 10, 64)
	end, err2 := strconv.ParseInt(e, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t <= end {
			return 0, 0, false
		}
		total = t
	}
	return start, total, true
}

func validatorsChanged(sc *sidecar, h http.Header) bool {
	if et := h.Get("ETag"); et != "" && sc.ETag != "" && et != sc.ETag {
		return true
	}
	if lm := h.Get("Last-Modified"); lm != "" && sc.LastModified != "" && lm != sc.LastModified {
		return true
	}
	return false
}

// Get returns the body of a small document (an index, a checksum file), read
// fully with the same retries as Fetch (bounded by MaxGetSize). file:// URLs are
// opened directly; other URLs fail with ErrOffline when Offline is set.
func (c *Client) Get(ctx context.Context, rawURL string) (io.ReadCloser, error) {
	target := c.Rewrite(rawURL)
	u, err := checkScheme(target)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "file" {
		return openFile(rawURL, target, u)
	}
	if c.Offline {
		return nil, fmt.Errorf("get %s: %w", rawURL, ErrOffline)
	}
	var body []byte
	err = c.retry(ctx, rawURL, target, func(ctx context.Context) error {
		a := c.startAttempt(ctx)
		defer a.end()
		resp, err := c.do(ctx, a, target, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
			return &statusError{code: resp.StatusCode, status: resp.Status}
		}
		var b bytes.Buffer
		buf := make([]byte, 64<<10)
		a.watchRate()
		for {
			n, rerr := resp.Body.Read(buf)
			if n > 0 {
				a.touch(n)
				if b.Len()+n > MaxGetSize {
					return fmt.Errorf("document larger than %d bytes; use Fetch", MaxGetSize)
				}
				b.Write(buf[:n])
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return a.classify(ctx, rerr)
			}
		}
		body = b.Bytes()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(body)), nil
}
