package metadata

import (
	"bytes"
	"compress/gzip"
	"context"
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

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
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
		resp, err := client(m.Client).Do(req)
		if err != nil {
			return nil, u, fmt.Errorf("%s: %w", u, unwrapURL(err))
		}
		data, rerr := readLimited(resp.Body)
		resp.Body.Close()
		switch {
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
	resp, err := client(m.Client).Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", u, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body)
	switch {
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

// Imgctl reads the NodeConfig from the imgctl metadata server: GET URL/v1/nodeconfig, with
// "Authorization: Bearer CREDENTIAL" for the full config; without a credential the server answers
// the public part only (enough for a master that lets kubeadm make its CA).
type Imgctl struct {
	URL        string       // base URL; empty: ErrNotConfigured
	Credential string       // node credential; empty: public part only
	Client     *http.Client // default: no proxy, no redirects
}

// ImgctlFromCmdline configures an Imgctl provider from imgctl.metadata=URL and
// imgctl.credential=TOKEN on a kernel command line.
func ImgctlFromCmdline(line string) *Imgctl {
	p := &Imgctl{}
	for _, f := range cmdline.Fields(line) {
		key, val, _ := strings.Cut(f, "=")
		switch key {
		case "imgctl.metadata":
			p.URL = val
		case "imgctl.credential":
			p.Credential = val
		}
	}
	return p
}

// Name implements Provider.
func (p *Imgctl) Name() string { return "imgctl" }

// Fetch implements Provider. 401, 403 (credential refused) and 404 (node unknown) are Permanent.
func (p *Imgctl) Fetch(ctx context.Context) ([]byte, string, error) {
	if p.URL == "" {
		return nil, "", NotConfigured("no imgctl.metadata= on the kernel command line")
	}
	base, err := url.Parse(p.URL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, p.URL, Permanent(fmt.Errorf("imgctl.metadata=%q: expected an http(s) URL", p.URL))
	}
	base.Path = strings.TrimSuffix(base.Path, "/") + "/v1/nodeconfig"
	base.RawPath = ""
	u := base.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, u, Permanent(err)
	}
	req.Header.Set("Accept", "application/yaml, application/json")
	if p.Credential != "" {
		req.Header.Set("Authorization", "Bearer "+p.Credential)
	}
	resp, err := client(p.Client).Do(req)
	if err != nil {
		return nil, u, fmt.Errorf("%s: %w", u, unwrapURL(err))
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

// defaultClient talks to link-local and boot-network servers directly: no proxy from the
// environment, and no redirects (a redirect from a metadata server is a misconfiguration or worse).
var defaultClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func client(c *http.Client) *http.Client {
	if c == nil {
		return defaultClient
	}
	return c
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
