// Package metadata finds a node's NodeConfig: it asks providers (the imgctl metadata server, EC2
// IMDSv2, a local file) in a configured order, each with bounded retries and per-attempt timeouts.
package metadata

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/backoff"
)

// ErrNotConfigured says a provider has no config for this node (no imgctl.metadata on the kernel
// command line, no user data, no file): Fetch moves on to the next provider without retrying.
var ErrNotConfigured = errors.New("not configured here")

// Provider is one source of a NodeConfig document.
type Provider interface {
	// Name is the provider's short name: imgctl, imds, file.
	Name() string
	// Fetch returns the raw document and where it came from (a URL or path). Errors matching
	// ErrNotConfigured skip the provider; those from Permanent stop its retries; others are retried.
	Fetch(ctx context.Context) (data []byte, source string, err error)
}

// NotConfigured returns an error that reads msg and matches ErrNotConfigured.
func NotConfigured(msg string) error { return &notConfiguredError{msg} }

type notConfiguredError struct{ msg string }

func (e *notConfiguredError) Error() string        { return e.msg }
func (e *notConfiguredError) Is(target error) bool { return target == ErrNotConfigured }

// Permanent marks err as not worth retrying (a rejected credential, IMDS turned off): Fetch gives
// up on the provider at once and moves on.
func Permanent(err error) error { return &permanentError{err} }

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Defaults for Options. With them one unreachable provider costs at most
// 5 × 5 s + (0.5+1+2+4) s × 1.5 ≈ 36 s.
const (
	DefaultAttempts   = 5
	DefaultBackoff    = 500 * time.Millisecond
	DefaultMaxBackoff = 8 * time.Second
	DefaultTimeout    = 5 * time.Second
)

// Options bound Fetch. Zero fields take the defaults above.
type Options struct {
	Attempts   int           // per provider
	Backoff    time.Duration // before the second attempt; doubles each time, ±50% jitter
	MaxBackoff time.Duration // cap of the doubling
	Timeout    time.Duration // per attempt
	Logger     *slog.Logger  // nil: discard
}

func (o Options) withDefaults() Options {
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

// ProviderError is why one provider gave no config.
type ProviderError struct {
	Provider string
	Attempts int // attempts made; 1 for a skipped or permanently failing provider
	Err      error
}

func (e *ProviderError) Error() string {
	if e.Attempts > 1 {
		return fmt.Sprintf("%s: %v after %d attempts", e.Provider, e.Err, e.Attempts)
	}
	return fmt.Sprintf("%s: %v", e.Provider, e.Err)
}

func (e *ProviderError) Unwrap() error { return e.Err }

// FetchError is Fetch's error when no provider gave a config: one line naming every provider.
type FetchError struct {
	Failures []*ProviderError
	Err      error // context error that cut Fetch short, if any
}

func (e *FetchError) Error() string {
	parts := make([]string, 0, len(e.Failures)+1)
	for _, f := range e.Failures {
		parts = append(parts, f.Error())
	}
	msg := "no NodeConfig from any metadata provider: "
	if e.Err != nil {
		msg = fmt.Sprintf("looking for a NodeConfig: %v: ", e.Err)
	}
	if len(parts) == 0 {
		parts = append(parts, "no providers")
	}
	return msg + strings.Join(parts, "; ")
}

// Unwrap gives the provider errors and the context error to errors.Is and errors.As.
func (e *FetchError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failures)+1)
	for _, f := range e.Failures {
		errs = append(errs, f)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Fetch asks providers in order and returns the first NodeConfig found, defaulted and validated,
// with its source ("imds http://169.254.169.254/latest/user-data"). A provider is retried up to
// opts.Attempts times with exponential backoff, each attempt bounded by opts.Timeout, so Fetch
// always returns in bounded time. A document that does not parse or validate ends Fetch with an
// error naming the provider: a broken config is an operator's mistake to fix, not a reason to boot
// with another provider's config. If no provider has a config, the *FetchError names each and why.
func Fetch(ctx context.Context, providers []Provider, opts Options) (*nodeconfig.NodeConfig, string, error) {
	opts = opts.withDefaults()
	log := opts.Logger
	fe := &FetchError{}
	for _, p := range providers {
		data, src, attempts, err := fetchOne(ctx, p, opts)
		if err != nil {
			fe.Failures = append(fe.Failures, &ProviderError{Provider: p.Name(), Attempts: attempts, Err: err})
			if ctx.Err() != nil {
				fe.Err = ctx.Err()
				return nil, "", fe
			}
			log.Info("metadata provider has no config", "provider", p.Name(), "attempts", attempts, "err", err)
			continue
		}
		source := p.Name() + " " + src
		c, err := nodeconfig.Parse(source, data)
		if err != nil {
			return nil, source, fmt.Errorf("invalid NodeConfig: %w", err)
		}
		c.Defaults()
		if err := c.Validate(); err != nil {
			return nil, source, fmt.Errorf("invalid NodeConfig from %s: %w", source, err)
		}
		log.Info("metadata found", "provider", p.Name(), "source", src, "attempts", attempts)
		return c, source, nil
	}
	return nil, "", fe
}

// fetchOne tries one provider with retries, returning the number of attempts made.
func fetchOne(ctx context.Context, p Provider, opts Options) ([]byte, string, int, error) {
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, opts.Timeout)
		var data []byte
		var src string
		data, src, err = p.Fetch(actx)
		cancel()
		switch {
		case err == nil:
			return data, src, attempt, nil
		case errors.Is(err, ErrNotConfigured), IsPermanent(err):
			return nil, "", attempt, err
		case ctx.Err() != nil:
			return nil, "", attempt, err
		case attempt >= opts.Attempts:
			return nil, "", attempt, err
		}
		d := retryWait(opts, attempt)
		opts.Logger.Debug("metadata attempt failed", "provider", p.Name(), "attempt", attempt, "retry_in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, "", attempt, err
		case <-t.C:
		}
	}
}

// retryWait is the wait after the given failed attempt.
func retryWait(o Options, attempt int) time.Duration {
	return backoff.Delay(o.Backoff, o.MaxBackoff, attempt)
}
