// Package fetch downloads the network root image into a file (on a tmpfs: into RAM) and
// verifies its sha256 digest while streaming. It checks the size against the RAM available
// before reading the body, bounds every attempt (time to a response, time without data),
// retries with backoff and resumes a dropped download with an HTTP Range request.
package fetch

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"
)

// Defaults for the zero fields of Options.
const (
	DefaultAttempts      = 5
	DefaultHeaderTimeout = 30 * time.Second
	DefaultStallTimeout  = 20 * time.Second
	DefaultBackoff       = time.Second
	MaxBackoff           = 15 * time.Second
	// DefaultReserve is the RAM left to the booted system when the root must fit next to it.
	DefaultReserve = 128 << 20

	partSuffix = ".part"
)

// Options of a download.
type Options struct {
	URL    string // http(s)://…
	Digest string // sha256:HEX the bytes must have; empty is refused
	Dest   string // the verified file; the download goes to Dest+".part" and is renamed

	// Available says how many bytes of RAM the image may take. Nil: /proc/meminfo's
	// MemAvailable minus DefaultReserve.
	Available func() (int64, error)
	Client    *http.Client // nil: a client with no overall timeout (the timeouts below bound it)

	Attempts      int           // tries in all (DefaultAttempts)
	HeaderTimeout time.Duration // per attempt: connect, send, first response byte (DefaultHeaderTimeout)
	StallTimeout  time.Duration // per attempt: longest time without body data (DefaultStallTimeout)
	Backoff       time.Duration // wait before the 2nd attempt, doubling up to MaxBackoff (DefaultBackoff)
	Logger        *slog.Logger  // one line per failed attempt; nil discards
}

// Result of a successful download.
type Result struct {
	Bytes       int64         // the image's size (on a digest mismatch: the bytes received)
	Attempts    int           // requests made, 1 without trouble
	ResumedFrom []int64       // offsets a Range request continued from
	Restarts    int           // times the server ignored a Range request and the download began again
	Errors      []string      // why each failed attempt failed
	Duration    time.Duration // from the first request to the verified file
	Digest      string        // verified: equal to Options.Digest
}

// MBps is the download's average rate in MB/s (10^6 bytes a second).
func (r Result) MBps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Duration.Seconds()
}

// permanent marks an error retrying cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Download fetches o.URL into o.Dest and verifies it has o.Digest. On error no file is left at
// o.Dest or o.Dest+".part".
func Download(ctx context.Context, o Options) (Result, error) {
	o.defaults()
	if err := CheckDigest(o.URL, o.Digest); err != nil {
		return Result{}, err
	}
	// Every message shows the URL redacted (user info and query may be secrets and reach the
	// console); only the request gets the real one.
	rawURL := o.URL
	o.URL = redact.String(rawURL)
	part := o.Dest + partSuffix
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("download %s: %w", o.URL, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = os.Remove(part)
		}
	}()
	d := &download{o: o, rawURL: rawURL, f: f, h: sha256.New(), size: -1}
	start := time.Now()
	res, err := d.run(ctx)
	if err != nil {
		return res, err
	}
	res.Bytes = d.off
	got := "sha256:" + hex.EncodeToString(d.h.Sum(nil))
	if got != o.Digest {
		return res, fmt.Errorf("download %s: digest mismatch: want %s, got %s (%d bytes)", o.URL, o.Digest, got, d.off)
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("download %s: sync %s: %w", o.URL, part, err)
	}
	if err := f.Close(); err != nil {
		return res, fmt.Errorf("download %s: close %s: %w", o.URL, part, err)
	}
	if err := os.Rename(part, o.Dest); err != nil {
		_ = os.Remove(part)
		return res, fmt.Errorf("download %s: %w", o.URL, err)
	}
	ok = true
	res.Digest, res.Duration = got, time.Since(start)
	return res, nil
}

// CheckDigest refuses a root without a sha256 digest: an unverified root never boots.
func CheckDigest(url, digest string) error {
	if digest == "" {
		return fmt.Errorf("no digest for %s: an unverified root never boots (end the URL in /sha256:HEX or set imgctl.root-digest=sha256:HEX)", redact.String(url))
	}
	if hex, ok := strings.CutPrefix(digest, "sha256:"); !ok || len(hex) != 64 {
		return fmt.Errorf("root digest %q for %s: want sha256: and 64 hex digits", digest, redact.String(url))
	}
	return nil
}

func (o *Options) defaults() {
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Available == nil {
		o.Available = func() (int64, error) {
			n, err := MemAvailable("/proc/meminfo")
			return n - DefaultReserve, err
		}
	}
}

// download is the state carried from one attempt to the next.
type download struct {
	rawURL    string // o.URL is the redacted form, for messages
	o         Options
	f         *os.File
	h         hash.Hash
	off       int64  // bytes in f, all of them hashed
	size      int64  // the image's size once a response said so; -1 before
	limit     int64  // the RAM available for it; 0 before the first response
	noRange   bool   // the server mangled a Range answer: start over without one
	validator string // ETag or Last-Modified of the first response, for If-Range
}

func (d *download) run(ctx context.Context) (Result, error) {
	var res Result
	wait := d.o.Backoff
	for res.Attempts < d.o.Attempts {
		res.Attempts++
		done, err := d.attempt(ctx, &res)
		if done && err == nil {
			return res, nil
		}
		var p permanent
		if errors.As(err, &p) {
			return res, p.error
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("download %s: %w", d.o.URL, ctx.Err())
		}
		res.Errors = append(res.Errors, err.Error())
		if res.Attempts == d.o.Attempts {
			return res, fmt.Errorf("download %s: gave up after %d attempts: %w", d.o.URL, res.Attempts, err)
		}
		d.o.Logger.Warn("root download attempt failed", "url", d.o.URL, "attempt", res.Attempts,
			"have", d.off, "retry-in", wait.String(), "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return res, fmt.Errorf("download %s: %w", d.o.URL, ctx.Err())
		}
		wait = min(2*wait, MaxBackoff)
	}
	return res, fmt.Errorf("download %s: no attempts", d.o.URL)
}

var (
	errNoResponse = errors.New("no response")
	errStalled    = errors.New("stalled")
)

// attempt makes one request and reads what it can into the file. done reports that the whole
// image has been read.
func (d *download) attempt(ctx context.Context, res *Result) (done bool, err error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(actx, http.MethodGet, d.rawURL, nil)
	if err != nil {
		return false, permanent{fmt.Errorf("download %s: %w", d.o.URL, err)}
	}
	from := d.off
	if from > 0 && !d.noRange {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-")
		if d.validator != "" {
			req.Header.Set("If-Range", d.validator)
		}
	}
	hdr := time.AfterFunc(d.o.HeaderTimeout, func() {
		cancel(fmt.Errorf("%w within %s", errNoResponse, d.o.HeaderTimeout))
	})
	resp, err := d.o.Client.Do(req)
	hdr.Stop()
	var uerr *url.Error
	if errors.As(err, &uerr) {
		uerr.URL = d.o.URL // net/http's errors name the request's URL: show the redacted one
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return false, permanent{fmt.Errorf("download %s: %w (the initrd trusts only the CA certificates it carries; the digest, not TLS, protects the root: plain http:// works)", d.o.URL, err)}
	}
	if err != nil {
		return false, d.cause(actx, err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusPartialContent && req.Header.Get("Range") != "":
		start, total, err := contentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != from || (d.size >= 0 && total != d.size) {
			d.noRange = true
			return false, fmt.Errorf("GET %s with Range bytes=%d-: bad Content-Range %q: starting over", d.o.URL, from, resp.Header.Get("Content-Range"))
		}
		res.ResumedFrom = append(res.ResumedFrom, from)
		d.o.Logger.Info("root download resumed", "url", d.o.URL, "from", from)
		if d.size < 0 {
			d.size = total
		}
	case resp.StatusCode == http.StatusOK:
		if d.off > 0 {
			// The server ignored Range (or the file changed under If-Range): start over.
			res.Restarts++
			d.o.Logger.Info("root download restarts from 0: the server sent the whole file", "url", d.o.URL, "had", d.off)
			if err := d.reset(); err != nil {
				return false, permanent{err}
			}
		}
		d.size = resp.ContentLength // -1: unknown, checked against RAM as it arrives
		d.validator = validator(resp.Header)
	default:
		err := fmt.Errorf("GET %s: %s", d.o.URL, resp.Status)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusRequestTimeout &&
			resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			return false, permanent{err}
		}
		if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
			d.noRange = true
		}
		return false, err
	}
	if err := d.checkRAM(); err != nil {
		return false, permanent{err}
	}
	return d.copy(actx, cancel, resp.Body)
}

// checkRAM compares the image's size (or, unknown, what has arrived) with the RAM available.
func (d *download) checkRAM() error {
	if d.limit == 0 {
		n, err := d.o.Available()
		if err != nil {
			return fmt.Errorf("download %s: available RAM: %w", d.o.URL, err)
		}
		d.limit = max(n, 1)
	}
	switch {
	case d.size > d.limit:
		return fmt.Errorf("download %s: the root image is %s but only %s of RAM is available for it", d.o.URL, size(d.size), size(d.limit))
	case d.size < 0 && d.off > d.limit:
		return fmt.Errorf("download %s: the root image is more than %s but only %s of RAM is available for it", d.o.URL, size(d.limit), size(d.limit))
	}
	return nil
}

func (d *download) copy(ctx context.Context, cancel context.CancelCauseFunc, body io.Reader) (bool, error) {
	stalled := fmt.Errorf("%w: no data for %s", errStalled, d.o.StallTimeout)
	stall := time.AfterFunc(d.o.StallTimeout, func() { cancel(stalled) })
	defer stall.Stop()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(d.o.StallTimeout)
			if d.size >= 0 && d.off+int64(n) > d.size {
				return false, fmt.Errorf("GET %s: more than the announced %d bytes", d.o.URL, d.size)
			}
			w, err := d.f.Write(buf[:n])
			d.h.Write(buf[:w])
			d.off += int64(w)
			if err != nil {
				return false, permanent{fmt.Errorf("download %s: write %s: %w", d.o.URL, d.f.Name(), err)}
			}
			if d.size < 0 {
				if err := d.checkRAM(); err != nil {
					return false, permanent{err}
				}
			}
		}
		switch {
		case rerr == io.EOF && (d.size < 0 || d.off == d.size):
			return true, nil
		case rerr == io.EOF:
			return false, fmt.Errorf("GET %s: connection closed at %d of %d bytes", d.o.URL, d.off, d.size)
		case rerr != nil:
			return false, d.cause(ctx, fmt.Errorf("GET %s: at %d of %d bytes: %w", d.o.URL, d.off, d.size, rerr))
		}
	}
}

// cause prefers the reason the attempt was cancelled over the transport's "context canceled".
func (d *download) cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("GET %s: at %d bytes: %w", d.o.URL, d.off, c)
	}
	return err
}

func (d *download) reset() error {
	if _, err := d.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("download %s: %w", d.o.URL, err)
	}
	if err := d.f.Truncate(0); err != nil {
		return fmt.Errorf("download %s: %w", d.o.URL, err)
	}
	d.h.Reset()
	d.off, d.size = 0, -1
	return nil
}

// validator is what If-Range may carry: a strong ETag, else Last-Modified.
func validator(h http.Header) string {
	if e := h.Get("ETag"); e != "" && !strings.HasPrefix(e, "W/") {
		return e
	}
	return h.Get("Last-Modified")
}

// contentRange parses "bytes START-END/TOTAL".
func contentRange(s string) (start, total int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	r, t, ok2 := strings.Cut(rest, "/")
	a, b, ok3 := strings.Cut(r, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	total, err3 := strconv.ParseInt(t, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start || end != total-1 {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	return start, total, nil
}

// size formats a byte count as "1.0 MiB (1048576 bytes)".
func size(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i] + " (" + strconv.FormatInt(n, 10) + " bytes)"
}

// MemAvailable reads MemAvailable from a meminfo file (/proc/meminfo), in bytes.
func MemAvailable(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read available memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("%s: bad MemAvailable line %q", path, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: bad MemAvailable line %q", path, sc.Text())
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return 0, fmt.Errorf("%s has no MemAvailable line", path)
}
