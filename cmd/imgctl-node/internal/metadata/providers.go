package metadata

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	redactpkg "github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/nodeapi"
)

// Provider defaults.
const (
	DefaultFilePath = "/etc/imgctl/node.yaml"
	DefaultIMDSURL  = "http://169.254.169.254"
	DefaultTokenTTL = 6 * time.Hour // the IMDSv2 maximum
)

// DefaultOrder is the provider order when none is configured (imgctl.metadata-order=): an
// explicit imgctl server first, then a local file, then the cloud. The two local checks cost
// nothing when they do not apply, while IMDS, where there is none (bare metal), costs its
// retries and timeouts; and a file present on the node was put there on purpose (a config
// partition, cloud-init, a site layer).
var DefaultOrder = []string{"imgctl", "file", "imds"}

// maxDoc bounds a fetched document (EC2 user data is at most 16 KiB).
const maxDoc = 1 << 20

// New returns the providers named in order, configured from the kernel command line (the contents
// of /proc/cmdline) and their defaults.
func New(order []string, kernelCmdline string) ([]Provider, error) {
	var ps []Provider
	for _, name := range order {
		switch name {
		case "imgctl":
			ps = append(ps, ImgctlFromCmdline(kernelCmdline))
		case "imds":
			ps = append(ps, &IMDS{})
		case "file":
			ps = append(ps, &File{})
		default:
			return nil, fmt.Errorf("unknown metadata provider %q (expected imgctl, imds or file)", name)
		}
	}
	return ps, nil
}

// File reads the NodeConfig from a local file.
type File struct {
	Path string // default DefaultFilePath
}

// Name implements Provider.
func (f *File) Name() string { return "file" }

// Fetch implements Provider. A missing file is ErrNotConfigured.
func (f *File) Fetch(ctx context.Context) ([]byte, string, error) {
	path := f.Path
	if path == "" {
		path = DefaultFilePath
	}
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, NotConfigured(path + ": no such file")
	}
	if err != nil {
		return nil, path, err // *PathError names the path
	}
	defer fh.Close()
	data, err := readLimited(fh)
	if err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	return data, path, nil
}

// IMDS reads EC2 user data through IMDSv2: a session token from PUT /latest/api/token, then
// GET /latest/user-data with it. The token is kept across calls and renewed when it expires or
// IMDS answers 401.
type IMDS struct {
	BaseURL  string        // default DefaultIMDSURL
	Client   *http.Client  // default: no proxy, no redirects
	TokenTTL time.Duration // default DefaultTokenTTL

	mu      sync.Mutex
	token   string
	expires time.Time
}

// Name implements Provider.
func (m *IMDS) Name() string { return "imds" }

func (m *IMDS) base() string {
	if m.BaseURL == "" {
		return DefaultIMDSURL
	}
	return strings.TrimSuffix(m.BaseURL, "/")
}

// Fetch implements Provider. No user data (404) is ErrNotConfigured; IMDS turned off (403) or
// without IMDSv2 is Permanent. Gzip-compressed user data is decompressed.
func (m *IMDS) Fetch(ctx context.Context) ([]byte, string, error) {
	u := m.base() + "/latest/user-data"
	for try := 0; ; try++ {
		tok, err := m.getToken(ctx, try > 0)
		if err != nil {
			return nil, u, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, u, Permanent(err)
		}
		req.Header.Set("X-aws-ec2-metadata-token", tok)
		resp, err := noRedirects(m.Client).Do(req)
		if err != nil {
			return nil, u, fmt.Errorf("%s: %w", u, unwrapURL(err))
		}
		data, rerr := readLimited(resp.Body)
		resp.Body.Close()
		switch {
		case isRedirect(resp.StatusCode):
			return nil, u, redirectError(u, resp)
		case resp.StatusCode == http.StatusUnauthorized && try == 0:
			continue // token expired or revoked: get a new one, once per attempt
		case resp.StatusCode == http.StatusNotFound:
			return nil, u, NotConfigured(u + ": no user data (404)")
		case resp.StatusCode == http.StatusForbidden:
			return nil, u, Permanent(fmt.Errorf("%s: %s (instance metadata turned off?)", u, resp.Status))
		case resp.StatusCode != http.StatusOK:
			return nil, u, fmt.Errorf("%s: %s", u, resp.Status)
		case rerr != nil:
			return nil, u, fmt.Errorf("%s: %w", u, rerr)
		}
		data, err = gunzip(data)
		if err != nil {
			return nil, u, Permanent(fmt.Errorf("%s: %w", u, err))
		}
		return data, u, nil
	}
}

func (m *IMDS) getToken(ctx context.Context, renew bool) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !renew && m.token != "" && time.Now().Before(m.expires) {
		return m.token, nil
	}
	m.token = ""
	ttl := m.TokenTTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	u := m.base() + "/latest/api/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, nil)
	if err != nil {
		return "", Permanent(err)
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(int(ttl/time.Second)))
	resp, err := noRedirects(m.Client).Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", u, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body)
	switch {
	case isRedirect(resp.StatusCode):
		return "", redirectError(u, resp)
	case resp.StatusCode == http.StatusForbidden:
		return "", Permanent(fmt.Errorf("%s: %s (instance metadata turned off?)", u, resp.Status))
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return "", Permanent(fmt.Errorf("%s: %s (no IMDSv2 here)", u, resp.Status))
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("%s: %s", u, resp.Status)
	case err != nil:
		return "", fmt.Errorf("%s: %w", u, err)
	}
	tok := strings.TrimSpace(string(body))
	if tok == "" {
		return "", fmt.Errorf("%s: empty token", u)
	}
	// Renew a minute early so a token does not expire between PUT and GET.
	m.token, m.expires = tok, time.Now().Add(ttl-min(time.Minute, ttl/2))
	return tok, nil
}

// Imgctl reads the NodeConfig from the imgctl metadata server: GET URL + nodeapi.NodeConfigPath,
// with the node credential as a bearer token (nodeapi.Bearer) for the full config; without a
// credential the server answers the public part only (enough for a master that lets kubeadm
// make its CA).
//
// A credential (Credential, or user info in URL) goes over https, or over plain http only when
// Insecure is set: anyone on the boot network reads plain http. With Pin, the URL must be https
// and the server must present exactly the pinned certificate, whatever CA signed it. No message
// ever shows the credential, the URL's user info or its query (see redact).
type Imgctl struct {
	URL        string // base URL; empty: ErrNotConfigured
	Credential string // node credential; empty: public part only
	Insecure   bool   // allow sending a credential over plain http
	// Pin is imgctl.metadata-pin: sha256:HEX of the server's leaf certificate (DER). When set,
	// only https is used and only that certificate is accepted; the CA does not matter.
	Pin    string
	Client *http.Client // default: no proxy; redirects are refused with any client

	pinGiven bool // imgctl.metadata-pin was on the command line, even empty

	mu     sync.Mutex
	pinned *http.Client // Client (or the default) with the pin check, made once
}

// ImgctlFromCmdline configures an Imgctl provider from imgctl.metadata=URL,
// imgctl.credential=TOKEN, imgctl.metadata-insecure and imgctl.metadata-pin=sha256:HEX on a
// kernel command line.
func ImgctlFromCmdline(line string) *Imgctl {
	p := &Imgctl{}
	for _, f := range cmdline.Fields(line) {
		key, val, hasVal := strings.Cut(f, "=")
		switch key {
		case boot.KeyMetadata:
			p.URL = val
		case boot.KeyCredential:
			p.Credential = val
		case boot.KeyMetadataInsecure:
			p.Insecure = cmdline.Flag(val, hasVal)
		case boot.KeyMetadataPin:
			p.Pin, p.pinGiven = val, true // an empty value is a pin that does not parse
		}
	}
	return p
}

// Name implements Provider.
func (p *Imgctl) Name() string { return "imgctl" }

// Fetch implements Provider. 401, 403 (credential refused), 404 (node unknown), a redirect, a
// certificate that does not match the pin and a credential refused for plain http are
// Permanent. The source it returns is redacted.
func (p *Imgctl) Fetch(ctx context.Context) ([]byte, string, error) {
	if p.URL == "" {
		return nil, "", NotConfigured("no " + boot.KeyMetadata + "= on the kernel command line")
	}
	resp, u, err := p.Do(ctx, http.MethodGet, nodeapi.NodeConfigPath, nil, "")
	if err != nil {
		return nil, u, err
	}
	defer resp.Body.Close()
	data, err := readLimited(resp.Body)
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, u, Permanent(fmt.Errorf("%s: %s (node credential refused)", u, resp.Status))
	case resp.StatusCode == http.StatusNotFound:
		return nil, u, Permanent(fmt.Errorf("%s: %s (server has no config for this node)", u, resp.Status))
	case resp.StatusCode != http.StatusOK:
		return nil, u, fmt.Errorf("%s: %s", u, resp.Status)
	case err != nil:
		return nil, u, fmt.Errorf("%s: %w", u, err)
	}
	return data, u, nil
}

// Do sends one request to the metadata server: method on URL + path (a nodeapi path), with the
// credential as a bearer token, body (if not nil) of type contentType, under every rule of
// Imgctl (https or the opt-in, the pin, no proxy, no redirects). It returns the response (the
// caller closes its body; never a 3xx) and the URL as messages may show it. Errors marked
// Permanent are not worth retrying: a bad URL or pin, a credential refused for plain http, a
// certificate that does not match the pin, a redirect.
func (p *Imgctl) Do(ctx context.Context, method, path string, body []byte, contentType string) (*http.Response, string, error) {
	base, err := url.Parse(p.URL)
	if err != nil {
		// url.Parse's error quotes the whole value, user info and all.
		return nil, "", Permanent(fmt.Errorf("%s= is not a URL (value not shown: it may carry a credential)", boot.KeyMetadata))
	}
	if (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, redact(base), Permanent(fmt.Errorf("%s=%s: expected an http(s) URL", boot.KeyMetadata, redact(base)))
	}
	base.Path = strings.TrimSuffix(base.Path, "/") + path
	base.RawPath = ""
	base.Fragment, base.RawFragment = "", ""
	u := redact(base) // the only form of the URL any message shows
	client := noRedirects(p.Client)
	if p.Pin != "" || p.pinGiven {
		if base.Scheme != "https" {
			return nil, u, Permanent(fmt.Errorf("%s is set: the metadata server must be an https:// URL, not %s", boot.KeyMetadataPin, u))
		}
		if client, err = p.pinnedClient(); err != nil {
			return nil, u, Permanent(err)
		}
	}
	if base.Scheme == "http" && (p.Credential != "" || base.User != nil) && !p.Insecure {
		return nil, u, Permanent(fmt.Errorf("%s: refusing to send the node credential over plain http "+
			"(anyone on the boot network can read it): use an https:// URL, or add %s=1 to the kernel command line to allow it",
			u, boot.KeyMetadataInsecure))
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base.String(), rd)
	if err != nil {
		return nil, u, Permanent(fmt.Errorf("%s: %w", u, unwrapURL(err)))
	}
	if method == http.MethodGet {
		req.Header.Set("Accept", nodeapi.NodeConfigMediaType+", application/json")
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if p.Credential != "" {
		req.Header.Set(nodeapi.AuthorizationHeader, nodeapi.Bearer(p.Credential))
	}
	resp, err := client.Do(req)
	if err != nil {
		err = unwrapURL(err)
		var pe *PinError
		if errors.As(err, &pe) {
			return nil, u, Permanent(fmt.Errorf("%s: %w", u, pe))
		}
		return nil, u, fmt.Errorf("%s: %w", u, err)
	}
	if isRedirect(resp.StatusCode) {
		resp.Body.Close()
		return nil, u, redirectError(u, resp)
	}
	return resp, u, nil
}

// PinError is a TLS certificate that does not match imgctl.metadata-pin.
type PinError struct {
	Got, Want string // sha256:HEX
}

func (e *PinError) Error() string {
	return fmt.Sprintf("certificate %s does not match %s=%s (a wrong pin, a renewed server certificate, or another server)",
		e.Got, boot.KeyMetadataPin, e.Want)
}

// ParsePin checks an imgctl.metadata-pin value and returns the sha256 it names.
func ParsePin(v string) ([]byte, error) {
	hexPart, ok := strings.CutPrefix(strings.ToLower(v), "sha256:")
	sum, err := hex.DecodeString(hexPart)
	if !ok || err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("%s=%s: expected sha256: and 64 hex digits (the sha256 of the server's leaf certificate, DER)",
			boot.KeyMetadataPin, clip(v))
	}
	return sum, nil
}

// pinnedClient is Client (or the default client) accepting exactly the pinned certificate: the
// chain is not verified against any CA (InsecureSkipVerify), VerifyConnection compares the
// leaf's sha256 in constant time instead.
func (p *Imgctl) pinnedClient() (*http.Client, error) {
	want, err := ParsePin(p.Pin)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pinned != nil {
		return p.pinned, nil
	}
	base := noRedirects(p.Client)
	var tr *http.Transport
	if t, ok := base.Transport.(*http.Transport); ok {
		tr = t.Clone()
	} else {
		tr = defaultTransport.Clone()
	}
	wantText := "sha256:" + hex.EncodeToString(want)
	tr.TLSClientConfig = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // the pin below replaces the CA check
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &PinError{Got: "(none)", Want: wantText}
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(got[:], want) != 1 {
				return &PinError{Got: "sha256:" + hex.EncodeToString(got[:]), Want: wantText}
			}
			return nil
		},
	}
	c := *base
	c.Transport = tr
	p.pinned = &c
	return p.pinned, nil
}

// clip shortens a value for a message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// redact returns u as messages may show it (see package redact).
func redact(u *url.URL) string { return redactpkg.URL(u) }

func isRedirect(code int) bool { return code >= 300 && code < 400 }

// redirectError is the Permanent error for a redirect: a metadata server that redirects is
// misconfigured or impersonated, and the credential must not follow it.
func redirectError(u string, resp *http.Response) error {
	to := "no Location"
	if loc, err := resp.Location(); err == nil {
		to = redact(loc)
	}
	return Permanent(fmt.Errorf("%s: %s: redirects are refused (to %s)", u, resp.Status, to))
}

// defaultClient talks to link-local and boot-network servers directly: no proxy from the
// environment, and no redirects (a redirect from a metadata server is a misconfiguration or
// worse: the caller reports the 3xx answer and does not retry).
var defaultClient = &http.Client{
	Transport:     defaultTransport,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

var defaultTransport = &http.Transport{
	Proxy:                 nil,
	DialContext:           (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
	MaxIdleConns:          4,
	IdleConnTimeout:       30 * time.Second,
	TLSHandshakeTimeout:   10 * time.Second,
	ResponseHeaderTimeout: 30 * time.Second,
}

// noRedirects returns c (default defaultClient) with redirects turned off: the 3xx answer
// itself comes back, for redirectError.
func noRedirects(c *http.Client) *http.Client {
	if c == nil {
		return defaultClient
	}
	cc := *c
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cc
}

// unwrapURL drops *url.Error's "Get "URL": " prefix: our messages name the URL once.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func readLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDoc+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxDoc {
		return nil, fmt.Errorf("document larger than %d bytes", maxDoc)
	}
	return data, nil
}

// gunzip decompresses gzip'd user data (EC2 allows it, to fit the 16 KiB limit).
func gunzip(data []byte) ([]byte, error) {
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		return data, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("gzip user data: %w", err)
	}
	out, err := readLimited(zr)
	if err != nil {
		return nil, fmt.Errorf("gzip user data: %w", err)
	}
	return out, nil
}
