// Package registry moves imgctl images and channel histories between a local store and an OCI
// registry (the distribution API, with go-containerregistry).
//
// An image goes up unchanged: its config and artifact blobs, then its manifest bytes exactly as
// the store holds them, so the digest in the registry is the digest in the store and signatures
// made locally stay valid. The manifest is tagged with the image's version (see Tag).
//
// A channel CH of a repository is two tags: CH points to the channel's current image manifest,
// and CH.history to an OCI artifact manifest (artifactType channel.HistoryArtifactType) whose one
// blob is the channel's channel.History and whose subject is that image.
package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrNotImgctl: the manifest a reference names is not an imgctl image (or, for a channel, not
// a channel history). Returned errors wrap it and say what the manifest is instead.
var ErrNotImgctl = errors.New("not an imgctl image")

// ErrPlainHTTP: a request would have gone over plain HTTP to a registry not marked insecure.
var ErrPlainHTTP = errors.New("plain HTTP to a registry that is not insecure")

// ErrTagMismatch: a pulled tag is neither the image's version nor a channel pointing to it.
var ErrTagMismatch = errors.New("tag does not name the image's version")

// ErrTooLarge: a manifest (or referrers index) the registry sent is larger than MaxManifest.
var ErrTooLarge = errors.New("manifest too large")

// MaxManifest bounds every manifest and referrers index read from a registry, and the image
// configs read whole (the store's own bound). imgctl's manifests are a few KiB.
// go-containerregistry alone would read up to 100 MiB of a hostile manifest into memory.
const MaxManifest = 4 << 20

// ErrUnauthorized: the registry refused the request (401 or 403). Errors wrap it and the
// registry's transport.Error, and say which registry, whether credentials were found for it, and
// how to provide them.
var ErrUnauthorized = errors.New("registry refused access")

// defaultJobs is how many blobs move at once unless Options.Jobs says otherwise.
const defaultJobs = 4

// Options configures a registry operation. The zero value is usable.
type Options struct {
	// Insecure talks plain HTTP to the registry. It defaults to true only for loopback
	// registries (localhost, 127.0.0.0/8, ::1); any other registry is reached over HTTPS
	// with certificate verification, even those go-containerregistry would otherwise try
	// over plain HTTP (RFC 1918 addresses, *.local names).
	Insecure bool
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Jobs is how many blobs are uploaded or downloaded at once; 0 means 4.
	Jobs int
	// Keychain finds credentials; nil means authn.DefaultKeychain (the docker config file,
	// $DOCKER_CONFIG, and the credential helpers it names).
	Keychain authn.Keychain
	// AllowTagMismatch lets Pull store the image a tag serves when the tag is neither the
	// image's version nor a channel of the repository pointing to it (see Pull); it then logs
	// a warning instead of failing with ErrTagMismatch.
	AllowTagMismatch bool
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o Options) jobs() int {
	if o.Jobs <= 0 {
		return defaultJobs
	}
	return o.Jobs
}

// insecure reports whether plain HTTP is allowed to registry host (host[:port]).
func (o Options) insecure(host string) bool {
	return o.Insecure || isLoopback(host)
}

// isLoopback reports whether host[:port] names the local machine: localhost, 127.0.0.0/8 or ::1.
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseRepo parses REGISTRY/REPO, marking the registry insecure as o says.
func parseRepo(repo string, o Options) (name.Repository, error) {
	r, err := name.NewRepository(repo)
	if err != nil {
		return name.Repository{}, fmt.Errorf("repository %q: %w", repo, err)
	}
	if o.insecure(r.RegistryStr()) {
		if r, err = name.NewRepository(repo, name.Insecure); err != nil {
			return name.Repository{}, fmt.Errorf("repository %q: %w", repo, err)
		}
	}
	return r, nil
}

// parseRef parses REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:…, marking the registry insecure as
// o says.
func parseRef(ref string, o Options) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %w", ref, err)
	}
	if o.insecure(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, fmt.Errorf("reference %q: %w", ref, err)
		}
	}
	return r, nil
}

// client holds what one operation on one registry shares: its pusher and puller reuse their
// token exchanges across requests.
type client struct {
	log    *slog.Logger
	jobs   int
	pusher *remote.Pusher
	puller *remote.Puller
}

func newClient(ctx context.Context, reg name.Registry, o Options) (*client, error) {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithJobs(o.jobs()),
		remote.WithTransport(manifestCap{schemeGuard{base: remote.DefaultTransport, allowHTTP: o.insecure(reg.RegistryStr())}}),
		remote.WithUserAgent("imgctl"),
	}
	pusher, err := remote.NewPusher(opts...)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", reg, err)
	}
	puller, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", reg, err)
	}
	return &client{log: o.logger(), jobs: o.jobs(), pusher: pusher, puller: puller}, nil
}

// schemeGuard refuses plain-HTTP requests unless the registry is insecure. go-containerregistry
// falls back to HTTP on its own for private addresses; this keeps the Options.Insecure
// contract, for token servers and redirects too.
type schemeGuard struct {
	base      http.RoundTripper
	allowHTTP bool
}

func (g schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.allowHTTP {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("%s %s: %w (set Options.Insecure to allow it)", req.Method, req.URL.Redacted(), ErrPlainHTTP)
	}
	return g.base.RoundTrip(req)
}

// manifestCap bounds the bodies of manifest and referrers responses (GET
// /v2/NAME/manifests/REF, /v2/NAME/referrers/DIGEST) to MaxManifest: a response that declares a
// larger Content-Length fails at once, and a body that runs past the bound fails its read, so
// a registry cannot make imgctl buffer more than MaxManifest bytes of a manifest. Errors wrap
// ErrTooLarge and name the URL and the bound.
type manifestCap struct{ base http.RoundTripper }

func (m manifestCap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := m.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !isManifestPath(req.URL.Path) {
		return resp, err
	}
	if resp.ContentLength > MaxManifest {
		_ = resp.Body.Close()
		return nil, tooLarge(req, fmt.Sprintf("is %d bytes (Content-Length), more than", resp.ContentLength))
	}
	resp.Body = &cappedBody{rc: resp.Body, req: req, left: MaxManifest}
	return resp, nil
}

// isManifestPath reports whether path is a distribution API manifest or referrers path.
func isManifestPath(path string) bool {
	if !strings.HasPrefix(path, "/v2/") {
		return false
	}
	parts := strings.Split(path, "/")
	return len(parts) >= 5 && (parts[len(parts)-2] == "manifests" || parts[len(parts)-2] == "referrers")
}

func tooLarge(req *http.Request, what string) error {
	return fmt.Errorf("GET %s: the manifest %s the %d bytes (%d MiB) imgctl accepts: %w",
		req.URL.Redacted(), what, MaxManifest, MaxManifest>>20, ErrTooLarge)
}

// cappedBody fails once more than left bytes have been read.
type cappedBody struct {
	rc   io.ReadCloser
	req  *http.Request
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, tooLarge(b.req, "is larger than")
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, tooLarge(b.req, "is larger than")
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// isNotFound reports whether err is the registry saying 404.
func isNotFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

// tagRE is the distribution spec's tag grammar.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// Tag is the registry tag of an image version. Versions may contain '+' (semver build
// metadata), which tags cannot; Tag replaces every character a tag cannot hold with '_' (as
// Helm does for chart versions) and keeps at most 128 characters. Versions never contain '_'
// (see manifest.Config.Validate), so distinct valid versions get distinct tags. The version
// itself stays in the manifest (org.opencontainers.image.version) and in the config.
func Tag(version string) string {
	b := []byte(version)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' ||
			i > 0 && (c == '.' || c == '-')
		if !ok {
			b[i] = '_'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// forEach runs fn(ctx, i) for i in [0, n), at most jobs at once. The first error cancels the
// others' ctx and is returned.
func forEach(ctx context.Context, jobs, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, jobs)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	fail := func(err error) {
		once.Do(func() {
			first = err
			cancel(err)
		})
	}
loop:
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		if ctx.Err() != nil {
			<-sem
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// explainAuth turns an error in which the registry of ref (REGISTRY/REPO[:TAG|@DIGEST]) refused
// access (a transport.Error with status 401 or 403) into one that says which registry, whether
// credentials for it were found and where, and how to provide them; it then wraps
// ErrUnauthorized as well as err. Other errors (and nil) pass through. Every exported
// operation runs its error through it, once.
func (o Options) explainAuth(err error, ref string) error {
	if tlsErr := explainUntrusted(err, ref); tlsErr != nil {
		return tlsErr
	}
	var terr *transport.Error
	if err == nil || errors.Is(err, ErrUnauthorized) || !errors.As(err, &terr) ||
		terr.StatusCode != http.StatusUnauthorized && terr.StatusCode != http.StatusForbidden {
		return err
	}
	var reg name.Registry
	if r, perr := name.ParseReference(ref); perr == nil {
		reg = r.Context().Registry
	} else if r, perr := name.NewRepository(ref); perr == nil {
		reg = r.Registry
	} else {
		return err
	}
	host := reg.RegistryStr()
	status := fmt.Sprintf("%d %s", terr.StatusCode, http.StatusText(terr.StatusCode))
	if terr.Request != nil {
		status += " to " + terr.Request.Method + " " + terr.Request.URL.Redacted()
	}
	for i, d := range terr.Errors { // what the registry said, if anything
		sep := "; "
		if i == 0 {
			sep = ": "
		}
		status += sep + string(d.Code) + ": " + d.Message
	}
	where, how := "the keychain given", "provide credentials for "+host
	if o.Keychain == nil {
		where = dockerConfigFile()
		how = fmt.Sprintf("log in with `docker login %s` (or `podman login %s`), or add an \"auths\" entry for %s to %s (imgctl reads $DOCKER_CONFIG/config.json, default ~/.docker/config.json, and the credential helpers it names)",
			host, host, host, where)
	}
	var msg string
	switch found, kerr := o.hasCredentials(reg); {
	case kerr != nil:
		msg = fmt.Sprintf("registry %s refused access (%s), and the credentials for it could not be read from %s: %v; %s", host, status, where, kerr, how)
	case !found:
		msg = fmt.Sprintf("registry %s refused access (%s): no credentials for %s were found in %s; %s", host, status, host, where, how)
	case terr.StatusCode == http.StatusForbidden:
		msg = fmt.Sprintf("registry %s denied access with the credentials found for it in %s (%s): the account may lack permission for this repository; %s", host, where, status, how)
	default:
		msg = fmt.Sprintf("registry %s rejected the credentials found for it in %s (%s): they are wrong or expired; %s", host, where, status, how)
	}
	// Put the explanation where go-containerregistry's text was, keeping the context around it.
	full, inner := err.Error(), terr.Error()
	if i := strings.LastIndex(full, inner); i >= 0 {
		full = full[:i] + msg + full[i+len(inner):]
	} else {
		full += ": " + msg
	}
	return &authError{msg: full, err: err}
}

// hasCredentials reports whether the keychain has credentials for reg.
func (o Options) hasCredentials(reg name.Registry) (bool, error) {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	a, err := kc.Resolve(reg)
	if err != nil {
		return false, err
	}
	if a == authn.Anonymous {
		return false, nil
	}
	cfg, err := a.Authorization()
	if err != nil {
		return false, err
	}
	return *cfg != authn.AuthConfig{}, nil
}

// dockerConfigFile is the docker config file authn.DefaultKeychain reads.
func dockerConfigFile() string {
	if dir := os.Getenv("DOCKER_CONFIG"); dir != "" {
		return filepath.Join(dir, "config.json")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".docker", "config.json")
	}
	return "~/.docker/config.json"
}

// authError is an error explained by explainAuth: its text replaces go-containerregistry's.
type authError struct {
	msg string
	err error
}

func (e *authError) Error() string   { return e.msg }
func (e *authError) Unwrap() []error { return []error{e.err, ErrUnauthorized} }

// explainUntrusted turns a certificate that this machine does not trust into an error that names
// the registry and says how to trust its CA; nil if err is not about that.
func explainUntrusted(err error, ref string) error {
	var ua x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &ua) && !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		// go-containerregistry's ping joins its https and http attempts into one string.
		return nil
	}
	host := ref
	if r, perr := name.ParseReference(ref); perr == nil {
		host = r.Context().RegistryStr()
	} else if r, perr := name.NewRepository(ref); perr == nil {
		host = r.RegistryStr()
	}
	return untrustedError{err: err, host: host}
}

// untrustedError wraps the TLS failure (its text trimmed: go-containerregistry ends it with a
// newline) with what to do about it.
type untrustedError struct {
	err  error
	host string
}

func (e untrustedError) Error() string {
	return strings.TrimSpace(e.err.Error()) + ": registry " + e.host + " presents a certificate signed by a CA this machine " +
		"does not trust; add that CA to the system's trust store, or point SSL_CERT_FILE at a PEM bundle that holds it " +
		"(--insecure only allows plain HTTP, it never skips certificate checks)"
}

func (e untrustedError) Unwrap() error { return e.err }
