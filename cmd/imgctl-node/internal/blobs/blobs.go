// Package blobs is the node's HTTP client for an update server (imgctl serve, or any server
// with its paths): bounded GETs of a channel pointer and a manifest, and Range reads of
// content-addressed blobs. Every response is checked (status, Content-Range, length) and every
// attempt is bounded in time; Retry repeats a failed attempt with a jittered, doubling backoff a
// bounded number of times. The server is untrusted: callers verify the bytes by digest.
package blobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/backoff"
)

// Defaults for the zero fields of Client.
const (
	DefaultAttempts      = 5
	DefaultBackoff       = time.Second
	DefaultMaxBackoff    = 30 * time.Second
	DefaultHeaderTimeout = 30 * time.Second
	DefaultStallTimeout  = 30 * time.Second
)

// Client talks to one update server.
type Client struct {
	Server string       // base URL (update.ServerURL checks it)
	HTTP   *http.Client // nil: a client without an overall timeout (the timeouts below bound each attempt)

	Attempts      int           // tries in all, per Retry (DefaultAttempts)
	Backoff       time.Duration // wait after the first failure, doubling (DefaultBackoff)
	MaxBackoff    time.Duration // (DefaultMaxBackoff)
	HeaderTimeout time.Duration // per request: connect, send, response headers (DefaultHeaderTimeout)
	StallTimeout  time.Duration // per request: longest time without body data (DefaultStallTimeout)
	Logger        *slog.Logger  // one line per failed attempt; nil discards
}

func (c *Client) defaults() {
	if c.Attempts <= 0 {
		c.Attempts = DefaultAttempts
	}
	if c.Backoff <= 0 {
		c.Backoff = DefaultBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = DefaultHeaderTimeout
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Permanent marks an error that retrying cannot fix (a 404, a server that ignores Range): Retry
// returns it at once.
type Permanent struct{ Err error }

func (p *Permanent) Error() string { return p.Err.Error() }
func (p *Permanent) Unwrap() error { return p.Err }

// permanent wraps err as Permanent.
func permanent(err error) error { return &Permanent{err} }

// Retry calls attempt until it succeeds, returns a Permanent error or the context ends, at most
// c.Attempts times, waiting a backoff between tries. what names the work in the error:
// "WHAT: gave up after N attempts: LAST ERROR".
func (c *Client) Retry(ctx context.Context, what string, attempt func(ctx context.Context) error) error {
	c.defaults()
	for i := 1; ; i++ {
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		var p *Permanent
		if errors.As(err, &p) {
			return p.Err
		}
		if i >= c.Attempts {
			return fmt.Errorf("%s: gave up after %d attempts: %w", what, i, err)
		}
		wait := backoff.Delay(c.Backoff, c.MaxBackoff, i)
		c.Logger.Warn("update server request failed, retrying", "what", what, "attempt", i, "retry-in", wait.String(), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
}

// Get fetches url (a full GET, status 200) and returns its body, at most max bytes, retrying as
// Retry does. A 4xx other than 408 and 429 is not retried.
func (c *Client) Get(ctx context.Context, url string, max int64) ([]byte, error) {
	c.defaults()
	var body []byte
	err := c.Retry(ctx, "GET "+url, func(ctx context.Context) error {
		rc, err := c.do(ctx, url, "", func(resp *http.Response) error {
			if resp.StatusCode != http.StatusOK {
				return statusError(url, resp)
			}
			if resp.ContentLength > max {
				return permanent(fmt.Errorf("GET %s: %d bytes, more than the %d allowed", url, resp.ContentLength, max))
			}
			return nil
		})
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err := io.ReadAll(io.LimitReader(rc, max+1))
		if err != nil {
			return fmt.Errorf("GET %s: %w", url, err)
		}
		if int64(len(data)) > max {
			return permanent(fmt.Errorf("GET %s: more than the %d bytes allowed", url, max))
		}
		body = data
		return nil
	})
	return body, err
}

// BlobURL is the URL of a blob on the client's server.
func (c *Client) BlobURL(digest string) (string, error) { return update.BlobURL(c.Server, digest) }

// Range makes one request for the bytes [off, off+n) of blob and returns the response body,
// which yields exactly n bytes or an error: the response must be 206 with Content-Range
// "bytes off-(off+n-1)/blob.Size" and, when given, Content-Length n. Errors retrying cannot
// fix are Permanent; the caller retries the others (Retry), continuing where it stopped.
func (c *Client) Range(ctx context.Context, blob update.Blob, off, n int64) (io.ReadCloser, error) {
	c.defaults()
	url, err := c.BlobURL(blob.Digest)
	if err != nil {
		return nil, permanent(err)
	}
	if off < 0 || n <= 0 || off+n > blob.Size {
		return nil, permanent(fmt.Errorf("GET %s: range %d+%d outside the blob's %d bytes", url, off, n, blob.Size))
	}
	rng := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	want := fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, blob.Size)
	rc, err := c.do(ctx, url, rng, func(resp *http.Response) error {
		switch {
		case resp.StatusCode == http.StatusOK:
			return permanent(fmt.Errorf("GET %s (Range %s): 200 OK with the whole blob: the server does not answer Range requests, which updates need", url, rng))
		case resp.StatusCode != http.StatusPartialContent:
			return statusError(url+" (Range "+rng+")", resp)
		case resp.Header.Get("Content-Range") != want:
			return fmt.Errorf("GET %s (Range %s): Content-Range %q, want %q", url, rng, resp.Header.Get("Content-Range"), want)
		case resp.ContentLength >= 0 && resp.ContentLength != n:
			return fmt.Errorf("GET %s (Range %s): Content-Length %d, want %d", url, rng, resp.ContentLength, n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &exact{rc: rc, left: n, what: "GET " + url + " (Range " + rng + ")"}, nil
}

// do sends one GET (with a Range header when rng is set), bounded by HeaderTimeout until the
// response and by StallTimeout between body reads; check judges the response before its body
// is read.
func (c *Client) do(ctx context.Context, url, rng string, check func(*http.Response) error) (io.ReadCloser, error) {
	actx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
	if err != nil {
		cancel(nil)
		return nil, permanent(fmt.Errorf("GET %s: %w", url, err))
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	hdr := time.AfterFunc(c.HeaderTimeout, func() { cancel(fmt.Errorf("no response within %s", c.HeaderTimeout)) })
	resp, err := c.HTTP.Do(req)
	hdr.Stop()
	if err != nil {
		err = cause(actx, err)
		cancel(nil)
		return nil, err
	}
	if err := check(resp); err != nil {
		resp.Body.Close()
		cancel(nil)
		return nil, err
	}
	stall := time.AfterFunc(c.StallTimeout, func() { cancel(fmt.Errorf("no data for %s", c.StallTimeout)) })
	return &stallBody{ReadCloser: resp.Body, ctx: actx, cancel: cancel, stall: stall, timeout: c.StallTimeout}, nil
}

// cause prefers the reason an attempt was cancelled (a timeout) over "context canceled".
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w: %w", err, c)
	}
	return err
}

func statusError(what string, resp *http.Response) error {
	err := fmt.Errorf("GET %s: %s", what, resp.Status)
	if s := resp.StatusCode; s >= 400 && s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests {
		return permanent(err)
	}
	return err
}

// stallBody resets the stall timer on every read and ends the attempt's context on Close.
type stallBody struct {
	io.ReadCloser
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stall   *time.Timer
	timeout time.Duration
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.stall.Reset(b.timeout)
	}
	if err != nil && err != io.EOF {
		err = cause(b.ctx, err)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.stall.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// exact yields exactly left bytes: a body that ends early or runs on is an error.
type exact struct {
	rc   io.ReadCloser
	left int64
	what string
}

func (e *exact) Read(p []byte) (int, error) {
	if e.left == 0 {
		var one [1]byte
		if n, _ := e.rc.Read(one[:]); n > 0 {
			return 0, fmt.Errorf("%s: more bytes than the range", e.what)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.rc.Read(p)
	e.left -= int64(n)
	switch {
	case err == io.EOF && e.left > 0:
		return n, fmt.Errorf("%s: %w: the body ended %d bytes short", e.what, io.ErrUnexpectedEOF, e.left)
	case err == io.EOF:
		return n, nil
	case err != nil:
		return n, fmt.Errorf("%s: %w", e.what, err)
	}
	return n, nil
}

func (e *exact) Close() error { return e.rc.Close() }
