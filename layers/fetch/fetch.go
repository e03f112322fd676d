// Package fetch downloads pinned files over HTTP(S) (or file://) into the layer cache.
// Downloads are verified while streaming, resumed with Range, retried with backoff, and honor mirrors and offline mode.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgctl/imgctl/layers/limits"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrOffline: the content is not in the cache and the client is offline.
	ErrOffline = errors.New("not in cache and offline mode forbids the network")
	// ErrNotFound: the server answered 404 or 410 (or a file:// path does not exist).
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: the downloaded content does not match the pinned digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrUnreachable: every attempt failed with a transient error.
	ErrUnreachable = errors.New("unreachable")
)

const unreachableHint = "use --mirror FROM=TO to point at a local copy, or --offline to build from the cache"

// Defaults for zero Client fields.
const (
	DefaultAttempts     = 5
	DefaultBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff   = 15 * time.Second
	DefaultStallTimeout = 60 * time.Second
)

// MaxGetSize bounds the documents Get buffers in memory.
const MaxGetSize = 256 << 20

// Progress reports a download's state. Total is -1 when unknown.
type Progress struct {
	URL             string
	Complete, Total int64
	Done            bool
	Err             error // with Done: why the download failed (nil: it succeeded)
}

// Mirror rewrites URLs starting with From to start with To instead,
// e.g. https://dl.k8s.io/ -> https://mirror.local/k8s/.
type Mirror struct {
	From, To string
}

// Client downloads files. The zero value is usable; it is safe for concurrent use
// once configured.
type Client struct {
	// HTTP is the client used for http(s); nil means a default client with dial,
	// TLS and response-header timeouts but no overall timeout (files are large).
	HTTP *http.Client
	// Attempts is the number of tries per download (default 5).
	Attempts int
	// Backoff and MaxBackoff bound the exponential, jittered delay between
	// attempts (defaults 500ms and 15s). Retry-After is honored up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// StallTimeout aborts an attempt when no bytes arrive for this long (default 60s).
	StallTimeout time.Duration
	// Mirrors rewrite URL prefixes; the longest matching From wins.
	Mirrors []Mirror
	// Offline forbids the network: only cached content (and file:// URLs) are served,
	// anything else fails with ErrOffline.
	Offline bool
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Progress, if set, is called at most about 10 times a second per download
	// and once with Done when the download ends.
	Progress func(Progress)
	// Limits bound every download: MaxSourceSize (a body over it fails at once and is
	// deleted) and MinTransferRate over RateWindow (a slower attempt fails and is retried).
	// The zero value means the defaults of package limits.
	Limits limits.Limits
}

func (c *Client) attempts() int {
	if c.Attempts > 0 {
		return c.Attempts
	}
	return DefaultAttempts
}

func (c *Client) backoff() time.Duration {
	if c.Backoff > 0 {
		return c.Backoff
	}
	return DefaultBackoff
}

func (c *Client) maxBackoff() time.Duration {
	if c.MaxBackoff > 0 {
		return c.MaxBackoff
	}
	return max(DefaultMaxBackoff, c.backoff())
}

func (c *Client) stallTimeout() time.Duration {
	if c.StallTimeout > 0 {
		return c.StallTimeout
	}
	return DefaultStallTimeout
}

func (c *Client) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return discard
}

var discard = slog.New(slog.DiscardHandler)

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP()
}

var defaultHTTP = sync.OnceValue(func() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Blobs are verified byte for byte: never let the transport decompress.
		DisableCompression: true,
	}}
})

// Rewrite applies the longest matching mirror prefix to u.
func (c *Client) Rewrite(u string) string {
	best := -1
	for i, m := range c.Mirrors {
		if m.From != "" && strings.HasPrefix(u, m.From) && (best < 0 || len(m.From) > len(c.Mirrors[best].From)) {
			best = i
		}
	}
	if best < 0 {
		return u
	}
	m := c.Mirrors[best]
	return m.To + strings.TrimPrefix(u, m.From)
}

// ParseMirror parses the --mirror flag value FROM=TO, where both are URL prefixes
// (http, https or file) that either both end with "/" or both do not.
func ParseMirror(s string) (Mirror, error) {
	const example = "e.g. --mirror https://dl.k8s.io/=https://mirror.local/k8s/"
	from, to, ok := strings.Cut(s, "=")
	from, to = strings.TrimSpace(from), strings.TrimSpace(to)
	if !ok || from == "" || to == "" {
		return Mirror{}, fmt.Errorf("invalid mirror %q: want FROM=TO (%s)", s, example)
	}
	for _, p := range []struct{ name, v string }{{"FROM", from}, {"TO", to}} {
		u, err := url.Parse(p.v)
		if err != nil {
			return Mirror{}, fmt.Errorf("invalid mirror %q: %s is not a URL: %w", s, p.name, err)
		}
		switch u.Scheme {
		case "http", "https":
			if u.Host == "" {
				return Mirror{}, fmt.Errorf("invalid mirror %q: %s %q has no host", s, p.name, p.v)
			}
		case "file":
			if u.Path == "" {
				return Mirror{}, fmt.Errorf("invalid mirror %q: %s %q has no path (want file:///abs/dir/)", s, p.name, p.v)
			}
		default:
			return Mirror{}, fmt.Errorf("invalid mirror %q: %s %q must start with http://, https:// or file:// (%s)", s, p.name, p.v, example)
		}
	}
	if strings.HasSuffix(from, "/") != strings.HasSuffix(to, "/") {
		return Mirror{}, fmt.Errorf("invalid mirror %q: FROM and TO must both end with \"/\" or neither (%s)", s, example)
	}
	return Mirror{From: from, To: to}, nil
}

// retryable marks a transient error; after is the server's Retry-After, if any.
type retryable struct {
	err   error
	after time.Duration
}

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

func transient(err error) error { return &retryable{err: err} }

// statusError describes an unexpected HTTP status.
type statusError struct {
	code   int
	status string
}

func (e *statusError) Error() string { return "HTTP " + e.status }

// checkStatus classifies a non-2xx response (whose body the caller closes).
func checkStatus(resp *http.Response) error {
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	serr := &statusError{code: code, status: resp.Status}
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		return fmt.Errorf("%w (%w)", ErrNotFound, serr)
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return &retryable{err: serr, after: retryAfter(resp.Header.Get("Retry-After"))}
	default:
		return serr
	}
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// delay returns the wait before retry number n (1-based).
func (c *Client) delay(n int, after time.Duration) time.Duration {
	d, maxd := c.backoff(), c.maxBackoff()
	for i := 1; i < n && d < maxd; i++ {
		d *= 2
	}
	d = min(d, maxd)
	d = d/2 + rand.N(d/2+1)
	if after > d {
		d = min(after, maxd)
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// where names a URL and, if different, its mirror rewrite.
func where(raw, target string) string {
	if raw == target {
		return raw
	}
	return raw + " (mirror " + target + ")"
}

// retry runs try up to c.attempts() times while it returns transient errors.
func (c *Client) retry(ctx context.Context, raw, target string, try func(ctx context.Context) error) error {
	n := c.attempts()
	var last error
	for i := 1; i <= n; i++ {
		if i > 1 {
			var after time.Duration
			var r *retryable
			if errors.As(last, &r) {
				after = r.after
			}
			d := c.delay(i-1, after)
			c.logger().Warn("fetch: retrying", "url", target, "attempt", i, "of", n, "in", d, "err", last)
			if err := sleep(ctx, d); err != nil {
				return fmt.Errorf("fetch %s: %w", where(raw, target), err)
			}
		}
		err := try(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fetch %s: %w", where(raw, target), context.Cause(ctx))
		}
		var r *retryable
		if !errors.As(err, &r) {
			return fmt.Errorf("fetch %s: %w", where(raw, target), err)
		}
		last = err
	}
	return fmt.Errorf("fetch %s: %d attempts failed, last: %w: %w; %s", where(raw, target), n, last, ErrUnreachable, unreachableHint)
}

var errStalled = errors.New("stalled")

// attempt bounds one HTTP exchange with a stall timer and a rate check: the attempt's
// context is cancelled when no bytes arrive (touch) for the stall timeout, or when the
// body, once it started (watchRate), averages less than the minimum rate over a window.
// The stall timer alone cannot catch a server that drips a byte a second.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	stall  time.Duration

	rate   int64 // minimum bytes per second; 0: no rate check
	window time.Duration
	got    atomic.Int64 // body bytes since the last rate check
	mu     sync.Mutex
	rtimer *time.Timer // the rate check; nil until watchRate
	ended  bool
}

func (c *Client) startAttempt(parent context.Context) *attempt {
	ctx, cancel := context.WithCancelCause(parent)
	a := &attempt{ctx: ctx, cancel: cancel, stall: c.stallTimeout()}
	a.rate, a.window = c.Limits.MinRate()
	a.timer = time.AfterFunc(a.stall, func() {
		cancel(fmt.Errorf("%w: no data for %s", errStalled, a.stall))
	})
	return a
}

// touch records n body bytes received.
func (a *attempt) touch(n int) {
	a.timer.Reset(a.stall)
	a.got.Add(int64(n))
}

// watchRate starts the minimum-rate check; call it when the response body starts.
func (a *attempt) watchRate() {
	if a.rate <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended || a.rtimer != nil {
		return
	}
	a.got.Store(0)
	a.rtimer = time.AfterFunc(a.window, a.checkRate)
}

func (a *attempt) checkRate() {
	n := a.got.Swap(0)
	if float64(n) < float64(a.rate)*a.window.Seconds() {
		measured := limits.Rate(float64(n) / a.window.Seconds())
		a.cancel(fmt.Errorf("%w: averaged %s over the last %s, below the minimum %s (--min-transfer-rate)",
			limits.ErrTooSlow, measured, a.window, limits.Rate(a.rate)))
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ended {
		a.rtimer.Reset(a.window)
	}
}

func (a *attempt) end() {
	a.timer.Stop()
	a.mu.Lock()
	a.ended = true
	if a.rtimer != nil {
		a.rtimer.Stop()
	}
	a.mu.Unlock()
	a.cancel(nil)
}

// classify turns a transport or body error into a transient error, unless the
// parent context is done.
func (a *attempt) classify(parent context.Context, err error) error {
	if parent.Err() != nil {
		return context.Cause(parent)
	}
	if cause := context.Cause(a.ctx); errors.Is(cause, errStalled) || errors.Is(cause, limits.ErrTooSlow) {
		return transient(cause)
	}
	return transient(err)
}

// do sends a GET; non-2xx responses are closed and returned as classified errors.
func (c *Client) do(parent context.Context, a *attempt, target string, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(a.ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	// An explicit identity encoding stops Go's transport from transparently decompressing.
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("User-Agent", "imgctl")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, a.classify(parent, err)
	}
	if resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		return resp, nil // the caller asked for a range and handles these
	}
	if err := checkStatus(resp); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

func checkScheme(target string) (*url.URL, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", target, err)
	}
	switch u.Scheme {
	case "http", "https", "file":
		return u, nil
	}
	return nil, fmt.Errorf("fetch %s: unsupported URL scheme %q (want https, http or file)", target, u.Scheme)
}

// progress throttles Progress callbacks.
type progress struct {
	fn    func(Progress)
	url   string
	last  time.Time
	total int64
	done  int64
}

func (p *progress) update(complete, total int64) {
	p.done, p.total = complete, total
	if p.fn == nil {
		return
	}
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.fn(Progress{URL: p.url, Complete: complete, Total: total})
	}
}

func (p *progress) finish(err error) {
	if p.fn != nil {
		p.fn(Progress{URL: p.url, Complete: p.done, Total: p.total, Done: true, Err: err})
	}
}
