package metadata

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const nodeDoc = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata: {name: node-7}
spec:
  role: node
  cluster: {name: prod, apiServer: "https://10.0.0.10:6443"}
  credentials:
    bootstrapToken: abcdef.0123456789abcdef
    caCertHashes: [sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
`

// publicDoc is what the imgctl server gives without a credential (a master needs none).
const publicDoc = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata: {name: master-1}
spec:
  role: master
  cluster: {name: prod}
`

// fast keeps retries tiny so the suite runs in well under a second.
var fast = Options{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, Timeout: time.Second}

// fakeIMDS is an IMDSv2 server: tokens from PUT /latest/api/token, user data for a valid token.
type fakeIMDS struct {
	mu           sync.Mutex
	userData     []byte // nil: 404
	tokens       map[string]bool
	n            int
	puts, gets   int
	failGets     int  // answer 500 to this many GETs first
	revokeOnce   bool // answer the first GET 401 (token expired)
	lastTTL      string
	requireToken bool
}

func newFakeIMDS(userData string) *fakeIMDS {
	f := &fakeIMDS{tokens: map[string]bool{}, requireToken: true}
	if userData != "" {
		f.userData = []byte(userData)
	}
	return f
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		f.puts++
		f.lastTTL = r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds")
		if f.lastTTL == "" {
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		f.n++
		tok := fmt.Sprintf("token-%d", f.n)
		f.tokens[tok] = true
		fmt.Fprint(w, tok)
	case r.Method == http.MethodGet && r.URL.Path == "/latest/user-data":
		f.gets++
		tok := r.Header.Get("X-aws-ec2-metadata-token")
		if f.requireToken && !f.tokens[tok] {
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		if f.revokeOnce {
			f.revokeOnce = false
			delete(f.tokens, tok)
			http.Error(w, "", http.StatusUnauthorized)
			return
		}
		if f.failGets > 0 {
			f.failGets--
			http.Error(w, "", http.StatusInternalServerError)
			return
		}
		if f.userData == nil {
			http.NotFound(w, r)
			return
		}
		w.Write(f.userData)
	default:
		http.Error(w, "", http.StatusMethodNotAllowed)
	}
}

func TestIMDS(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(nodeDoc))
	zw.Close()
	tests := []struct {
		name      string
		setup     func(f *fakeIMDS)
		wantErr   string // empty: success
		wantPuts  int
		wantGets  int
		wantTries int // attempts, from the error or success
	}{
		{"token flow", func(*fakeIMDS) {}, "", 1, 1, 1},
		{"401 refreshes the token", func(f *fakeIMDS) { f.revokeOnce = true }, "", 2, 2, 1},
		{"500 then success", func(f *fakeIMDS) { f.failGets = 2 }, "", 1, 3, 3},
		{"500 forever", func(f *fakeIMDS) { f.failGets = 100 }, "/latest/user-data: 500 Internal Server Error after 3 attempts", 1, 3, 3},
		{"no user data", func(f *fakeIMDS) { f.userData = nil }, "/latest/user-data: no user data (404)", 1, 1, 1},
		{"gzip user data", func(f *fakeIMDS) { f.userData = gz.Bytes() }, "", 1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeIMDS(nodeDoc)
			tt.setup(f)
			srv := httptest.NewServer(f)
			defer srv.Close()
			c, src, err := Fetch(context.Background(), []Provider{&IMDS{BaseURL: srv.URL, TokenTTL: time.Minute}}, fast)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Metadata.Name != "node-7" || src != "imds "+srv.URL+"/latest/user-data" {
					t.Fatalf("got %q from %q", c.Metadata.Name, src)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "no NodeConfig from any metadata provider: imds: ") {
				t.Fatalf("got error %v, want %q", err, tt.wantErr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.puts != tt.wantPuts || f.gets != tt.wantGets {
				t.Errorf("%d PUTs, %d GETs; want %d, %d", f.puts, f.gets, tt.wantPuts, tt.wantGets)
			}
			if f.lastTTL != "60" {
				t.Errorf("token TTL header %q, want 60", f.lastTTL)
			}
		})
	}
}

func TestIMDSTokenRequired(t *testing.T) {
	// The server refuses GETs without a token (as with IMDSv2 "required"); a provider that skipped the
	// PUT would see 401 on every GET. Ours sends the token it got.
	f := newFakeIMDS(nodeDoc)
	srv := httptest.NewServer(f)
	defer srv.Close()
	m := &IMDS{BaseURL: srv.URL}
	for range 2 { // the token is reused across fetches
		if _, _, err := m.Fetch(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Get(srv.URL + "/latest/user-data")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("fake accepts tokenless GET: %s", resp.Status)
	}
	if f.puts != 1 || f.lastTTL != "21600" {
		t.Fatalf("%d PUTs with TTL %q, want 1 with 21600", f.puts, f.lastTTL)
	}
}

func TestIMDSPermanent(t *testing.T) {
	tests := []struct {
		name   string
		status int
		want   string
	}{
		{"imds off", http.StatusForbidden, "instance metadata turned off"},
		{"no IMDSv2", http.StatusMethodNotAllowed, "no IMDSv2 here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()
			_, _, err := Fetch(context.Background(), []Provider{&IMDS{BaseURL: srv.URL}}, fast)
			if err == nil || !strings.Contains(err.Error(), tt.want) || n.Load() != 1 {
				t.Fatalf("got %v after %d requests", err, n.Load())
			}
		})
	}
}

// fakeImgctl serves the full config to the right credential and the public part to anyone.
func fakeImgctl(t *testing.T, cred string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/boot/v1/nodeconfig" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		switch auth := r.Header.Get("Authorization"); auth {
		case "":
			fmt.Fprint(w, publicDoc)
		case "Bearer " + cred:
			fmt.Fprint(w, nodeDoc)
		default:
			http.Error(w, "bad credential", http.StatusUnauthorized)
		}
	}))
}

func TestImgctl(t *testing.T) {
	srv := fakeImgctl(t, "s3cret")
	defer srv.Close()
	tests := []struct {
		name     string
		cmdline  string
		wantName string
		wantErr  string
	}{
		{"with credential", "console=ttyS0 imgctl.metadata=" + srv.URL + "/boot/ imgctl.credential=s3cret imgctl.metadata-insecure=1 quiet", "node-7", ""},
		{"public part only", "imgctl.metadata=" + srv.URL + "/boot", "master-1", ""},
		{"quoted", `imgctl.metadata="` + srv.URL + `/boot" imgctl.credential="s3cret" imgctl.metadata-insecure="1"`, "node-7", ""},
		{"wrong credential", "imgctl.metadata=" + srv.URL + "/boot imgctl.credential=nope imgctl.metadata-insecure=1", "", "401 Unauthorized (node credential refused)"},
		{"unknown path", "imgctl.metadata=" + srv.URL + "/elsewhere", "", "404 Not Found (server has no config for this node)"},
		{"not configured", "console=ttyS0 root=/dev/vda", "", "imgctl: no imgctl.metadata= on the kernel command line"},
		{"bad URL", "imgctl.metadata=ftp://x", "", `imgctl.metadata=ftp://x: expected an http(s) URL`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, src, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(tt.cmdline)}, fast)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "attempts") {
					t.Fatalf("got %v, want %q (no retries)", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatal("error leaks the credential")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Metadata.Name != tt.wantName || src != "imgctl "+srv.URL+"/boot/v1/nodeconfig" {
				t.Fatalf("got %q from %q", c.Metadata.Name, src)
			}
		})
	}
}

func TestFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(good, []byte(nodeDoc), 0o600); err != nil {
		t.Fatal(err)
	}
	c, src, err := Fetch(context.Background(), []Provider{&File{Path: good}}, fast)
	if err != nil || c.Metadata.Name != "node-7" || src != "file "+good {
		t.Fatalf("got %v, %q, %v", c, src, err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	_, _, err = Fetch(context.Background(), []Provider{&File{Path: missing}}, fast)
	if want := "file: " + missing + ": no such file"; err == nil || !strings.HasSuffix(err.Error(), want) || !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("got %v, want …%q", err, want)
	}
	if p := (&File{}); p.Name() != "file" {
		t.Fatal(p.Name())
	}
}

func TestInvalidConfigNamesProvider(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec: {role: worker}\n"), 0o600)
	incomplete := filepath.Join(dir, "incomplete.yaml")
	os.WriteFile(incomplete, []byte("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec: {role: node}\n"), 0o600)
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(nodeDoc), 0o600)
	f := newFakeIMDS("#!/bin/bash\necho cloud-init script\n")
	srv := httptest.NewServer(f)
	defer srv.Close()

	tests := []struct {
		name      string
		providers []Provider
		want      []string
	}{
		{"unknown role", []Provider{&File{Path: bad}, &File{Path: good}}, []string{
			"invalid NodeConfig: file " + bad + `: spec.role: unknown role "worker" (expected master, masterFollower or node)`}},
		{"missing fields", []Provider{&File{Path: incomplete}}, []string{
			"invalid NodeConfig from file " + incomplete + ": spec.cluster.apiServer: required for role node", "spec.credentials: role node needs"}},
		{"not YAML user data", []Provider{&IMDS{BaseURL: srv.URL}}, []string{
			"invalid NodeConfig: imds " + srv.URL + "/latest/user-data: (document): expected a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Fetch(context.Background(), tt.providers, fast)
			if err == nil {
				t.Fatalf("got %+v, want an error", c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
}

// closedURL returns a loopback URL nothing listens on.
func closedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

func TestOrderAndFallthrough(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "node.yaml")
	os.WriteFile(good, []byte(nodeDoc), 0o600)
	missing := filepath.Join(dir, "none.yaml")
	imgctl := fakeImgctl(t, "s3cret")
	defer imgctl.Close()
	noUserData := newFakeIMDS("")
	imds404 := httptest.NewServer(noUserData)
	defer imds404.Close()
	dead := closedURL(t)

	tests := []struct {
		name      string
		providers []Provider
		wantSrc   string
		wantErr   []string
	}{
		{"first wins", []Provider{&File{Path: good}, &IMDS{BaseURL: dead}}, "file " + good, nil},
		{"skip unconfigured imgctl and empty imds", []Provider{
			ImgctlFromCmdline("quiet"), &IMDS{BaseURL: imds404.URL}, &File{Path: good}}, "file " + good, nil},
		{"imgctl before file", []Provider{
			ImgctlFromCmdline("imgctl.metadata=" + imgctl.URL + "/boot imgctl.credential=s3cret imgctl.metadata-insecure=1"), &File{Path: good}},
			"imgctl " + imgctl.URL + "/boot/v1/nodeconfig", nil},
		{"unreachable then file", []Provider{&IMDS{BaseURL: dead}, &File{Path: good}}, "file " + good, nil},
		{"nothing anywhere", []Provider{ImgctlFromCmdline(""), &IMDS{BaseURL: dead}, &File{Path: missing}}, "", []string{
			"no NodeConfig from any metadata provider: imgctl: no imgctl.metadata= on the kernel command line; imds: " +
				dead + "/latest/api/token: dial tcp ",
			"connection refused after 3 attempts; file: " + missing + ": no such file"}},
		{"no providers", nil, "", []string{"no NodeConfig from any metadata provider: no providers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			c, src, err := Fetch(context.Background(), tt.providers, fast)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("got config from %s", src)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\n does not contain %q", err, w)
					}
				}
				var fe *FetchError
				if !errors.As(err, &fe) || len(fe.Failures) != len(tt.providers) {
					t.Errorf("want a *FetchError with %d failures, got %#v", len(tt.providers), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if src != tt.wantSrc || c == nil {
				t.Fatalf("source %q, want %q", src, tt.wantSrc)
			}
		})
	}
}

// TestBounded: a server that accepts and never answers costs Attempts × Timeout + backoff, not forever.
func TestBounded(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	opts := Options{Attempts: 3, Backoff: time.Millisecond, Timeout: 50 * time.Millisecond}
	start := time.Now()
	_, _, err := Fetch(context.Background(), []Provider{&IMDS{BaseURL: srv.URL}}, opts)
	d := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "context deadline exceeded after 3 attempts") {
		t.Fatalf("got %v", err)
	}
	if d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("took %v, want about 3 × 50ms", d)
	}

	// The caller's context ends Fetch early, naming what was tried.
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, _, err = Fetch(ctx, []Provider{&IMDS{BaseURL: srv.URL}, &File{}}, Options{Attempts: 100, Backoff: time.Millisecond, Timeout: time.Second})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "looking for a NodeConfig: context deadline exceeded: imds: ") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestBackoff(t *testing.T) {
	o := Options{Backoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	tests := []struct {
		attempt int
		base    time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond}, {10, 400 * time.Millisecond}, {100, 400 * time.Millisecond}}
	for _, tt := range tests {
		for range 50 {
			if d := retryWait(o, tt.attempt); d < tt.base/2 || d >= tt.base*3/2 {
				t.Fatalf("attempt %d: %v outside [%v, %v)", tt.attempt, d, tt.base/2, tt.base*3/2)
			}
		}
	}
}

func TestNew(t *testing.T) {
	ps, err := New(DefaultOrder, "imgctl.metadata=http://10.0.0.1:8080 imgctl.credential=x")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name())
	}
	if strings.Join(names, ",") != "imgctl,file,imds" {
		t.Fatal(names)
	}
	if p := ps[0].(*Imgctl); p.URL != "http://10.0.0.1:8080" || p.Credential != "x" {
		t.Fatalf("%+v", p)
	}
	if _, err := New([]string{"imds", "ec2"}, ""); err == nil || !strings.Contains(err.Error(), `unknown metadata provider "ec2"`) {
		t.Fatalf("got %v", err)
	}
}

// countingImgctl is fakeImgctl that counts requests and records the Authorization header seen.
func countingImgctl(t *testing.T, cred string, tls bool) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	h := fakeImgctl(t, cred).Config.Handler
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(counted)
	} else {
		srv = httptest.NewServer(counted)
	}
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestImgctlNeverShowsCredentials: neither the source (the console's step line) nor any error
// shows URL user info, the bearer credential or the URL's query.
func TestImgctlNeverShowsCredentials(t *testing.T) {
	srv, _ := countingImgctl(t, "s3cret", false)
	host := strings.TrimPrefix(srv.URL, "http://")
	secrets := []string{"user:secret", "secret", "s3cret", "user@", "tok3n"}
	check := func(t *testing.T, what, s string) {
		t.Helper()
		for _, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("%s %q shows %q", what, s, sec)
			}
		}
	}
	for _, tc := range []struct {
		name, cmdline, wantSrc, wantErr string
	}{
		{"user info, opted in", "imgctl.metadata=http://user:secret@" + host + "/boot imgctl.credential=s3cret imgctl.metadata-insecure=1",
			"imgctl http://" + host + "/boot/v1/nodeconfig", ""},
		{"query, opted in", "imgctl.metadata=http://" + host + "/boot?t=tok3n imgctl.credential=s3cret imgctl.metadata-insecure",
			"imgctl http://" + host + "/boot/v1/nodeconfig?REDACTED", ""},
		{"user info, refused", "imgctl.metadata=http://user:secret@" + host + "/boot",
			"", "http://" + host + "/boot/v1/nodeconfig: refusing to send"},
		{"user info and wrong credential", "imgctl.metadata=http://user:secret@" + host + "/boot?t=tok3n imgctl.credential=nope imgctl.metadata-insecure=1",
			"", "http://" + host + "/boot/v1/nodeconfig?REDACTED: 401 Unauthorized"},
		{"user info, unreachable", "imgctl.metadata=http://user:secret@" + closedURL(t)[len("http://"):] + "/boot?t=tok3n imgctl.metadata-insecure=1",
			"", "connection refused"},
		{"unparsable", "imgctl.metadata=http://user:secret@[::1/x%zz", "", "imgctl.metadata= is not a URL"},
		{"not http", "imgctl.metadata=ftp://user:secret@" + host + "/x", "", "imgctl.metadata=ftp://" + host + "/x: expected an http(s) URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			opts := fast
			opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c, src, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(tc.cmdline)}, opts)
			check(t, "source", src)
			check(t, "log", logs.String())
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if src != tc.wantSrc || c.Metadata.Name != "node-7" {
					t.Errorf("got %q from %q, want node-7 from %q", c.Metadata.Name, src, tc.wantSrc)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			check(t, "error", err.Error())
		})
	}
}

// TestImgctlPlainHTTPNeedsOptIn: a credential (bearer or URL user info) goes over plain http only
// with imgctl.metadata-insecure on the kernel command line; without it nothing is sent at all.
func TestImgctlPlainHTTPNeedsOptIn(t *testing.T) {
	srv, n := countingImgctl(t, "s3cret", false)
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, line := range []string{
		"imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret",
		"imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret imgctl.metadata-insecure=0",
		"imgctl.metadata=http://user:pw@" + host + "/boot",
	} {
		n.Store(0)
		_, _, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(line)}, fast)
		want := "http://" + host + "/boot/v1/nodeconfig: refusing to send the node credential over plain http " +
			"(anyone on the boot network can read it): use an https:// URL, or add imgctl.metadata-insecure=1 to the kernel command line to allow it"
		if err == nil || !strings.Contains(err.Error(), want) || !IsPermanent(errors.Unwrap(err.(*FetchError).Failures[0])) {
			t.Errorf("%s:\n err = %v\nwant %q (permanent)", line, err, want)
		}
		if got := n.Load(); got != 0 {
			t.Errorf("%s: the server saw %d requests, want none", line, got)
		}
	}

	// Opted in: works.
	for _, opt := range []string{"imgctl.metadata-insecure=1", "imgctl.metadata-insecure", "imgctl.metadata-insecure=yes"} {
		c, _, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline("imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret " + opt)}, fast)
		if err != nil || c.Metadata.Name != "node-7" {
			t.Errorf("%s: got %v, %v", opt, c, err)
		}
	}
	// No credential: the public part needs no opt-in.
	c, _, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline("imgctl.metadata=" + srv.URL + "/boot")}, fast)
	if err != nil || c.Metadata.Name != "master-1" {
		t.Errorf("public part: got %v, %v", c, err)
	}
}

// TestImgctlHTTPS: over https the credential needs no opt-in.
func TestImgctlHTTPS(t *testing.T) {
	srv, n := countingImgctl(t, "s3cret", true)
	p := ImgctlFromCmdline("imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret")
	p.Client = srv.Client()
	c, src, err := Fetch(context.Background(), []Provider{p}, fast)
	if err != nil || c.Metadata.Name != "node-7" || src != "imgctl "+srv.URL+"/boot/v1/nodeconfig" || n.Load() != 1 {
		t.Fatalf("got %v from %q, %v after %d requests", c, src, err, n.Load())
	}
}

// TestRedirectsRefusedOnce: a redirect is refused at the first answer, not retried, and the
// bearer credential never follows it, even with a client that follows redirects.
func TestRedirectsRefusedOnce(t *testing.T) {
	var other atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		other.Add(1)
		fmt.Fprint(w, nodeDoc)
	}))
	defer target.Close()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.Redirect(w, r, target.URL+"/elsewhere?t=tok3n", http.StatusFound)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name string
		p    Provider
	}{
		{"imgctl", ImgctlFromCmdline("imgctl.metadata=" + srv.URL + " imgctl.credential=s3cret imgctl.metadata-insecure=1")},
		{"imgctl, client following redirects", &Imgctl{URL: srv.URL, Credential: "s3cret", Insecure: true, Client: &http.Client{}}},
		{"imds", &IMDS{BaseURL: srv.URL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.Store(0)
			other.Store(0)
			_, _, err := Fetch(context.Background(), []Provider{tc.p}, fast)
			if err == nil || !strings.Contains(err.Error(), "302 Found: redirects are refused (to "+target.URL+"/elsewhere?REDACTED)") {
				t.Errorf("err = %v, want redirects refused", err)
			} else if strings.Contains(err.Error(), "tok3n") || strings.Contains(err.Error(), "attempts") {
				t.Errorf("err = %v: shows the query or was retried", err)
			}
			if n.Load() != 1 || other.Load() != 0 {
				t.Errorf("requests: %d to the server, %d to the redirect target; want 1 and 0", n.Load(), other.Load())
			}
		})
	}
}
