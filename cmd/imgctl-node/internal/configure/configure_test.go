package configure

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/health"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/nodeapi"
)

func testPEM(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "system:node:node-1", Organization: []string{"system:nodes"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

func indent(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n      ")
}

func certConfig(t *testing.T) string {
	cert, key := testPEM(t)
	return fmt.Sprintf(`apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: node-1
spec:
  role: node
  cluster:
    apiServer: https://10.0.0.10:6443
    caCertificate: |
%s
  credentials:
    clientCertificate: |
%s
    clientKey: |
%s
`, indent(cert), indent(cert), indent(key))
}

const tokenConfig = `apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: node-2
spec:
  role: node
  cluster:
    apiServer: https://10.0.0.10:6443
  credentials:
    bootstrapToken: abcdef.0123456789abcdef
    caCertHashes: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
`

type fixture struct {
	root     string
	steps    bytes.Buffer
	mu       sync.Mutex
	commands []string
	hostname string
	healthy  bool
	cmdErr   map[string]error
	// kubeadm, if set, plays kubeadm: n counts its calls with the same arguments, from 1.
	kubeadm func(out io.Writer, args string, n int) error
	kcalls  map[string]int
	output  syncBuffer // Options.Output
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newFixture(t *testing.T, nodeYAML string) (*fixture, Options) {
	t.Helper()
	f := &fixture{root: t.TempDir(), healthy: true}
	info := &imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Name: "n", Kubernetes: "1.21.13", Bootstrap: "1.0.0"}
	b, err := info.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(f.root, imageinfo.Path, 0o644, b)
	if nodeYAML != "" {
		writeFile(f.root, metadata.DefaultFilePath, 0o600, []byte(nodeYAML))
	}
	o := Options{
		Root:    f.root,
		Cmdline: "console=ttyS0 imgctl.metadata-order=file",
		Steps:   steplog.New(&f.steps),
		Run: func(ctx context.Context, name string, args ...string) error {
			c := name + " " + strings.Join(args, " ")
			f.mu.Lock()
			defer f.mu.Unlock()
			f.commands = append(f.commands, c)
			return f.cmdErr[c]
		},
		Output: &f.output,
		Kubeadm: func(ctx context.Context, out io.Writer, args ...string) error {
			c := "kubeadm " + strings.Join(args, " ")
			f.mu.Lock()
			f.commands = append(f.commands, c)
			if f.kcalls == nil {
				f.kcalls = map[string]int{}
			}
			f.kcalls[c]++
			n, play, err := f.kcalls[c], f.kubeadm, f.cmdErr[c]
			f.mu.Unlock()
			if play != nil {
				return play(out, strings.Join(args, " "), n)
			}
			return err
		},
		KubeadmBackoff:        time.Millisecond,
		FollowerRetryFor:      time.Second,
		KubeadmAttemptTimeout: time.Second,
		SetHostname:           func(n string) error { f.hostname = n; return nil },
		Hostname:              func() (string, error) { return "Localhost-X", nil },
		CRIProbe: func(context.Context) (health.CRIInfo, error) {
			return health.CRIInfo{RuntimeName: "containerd", RuntimeVersion: "1.6.20", API: "v1alpha2"}, nil
		},
		KubeletProbe: func(context.Context) error {
			if f.healthy {
				return nil
			}
			return errors.New("connection refused")
		},
		ReadyTimeout: 300 * time.Millisecond,
		PollInterval: 10 * time.Millisecond,
		Metadata:     metadata.Options{Attempts: 2, Backoff: time.Millisecond, Timeout: 200 * time.Millisecond},
	}
	return f, o
}

// lines returns "name=status" for each step line.
func (f *fixture) lines() []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(f.steps.String()), "\n") {
		fs := strings.Fields(l)
		if len(fs) < 3 {
			continue
		}
		out = append(out, strings.TrimPrefix(fs[1], "step=")+"="+strings.TrimPrefix(fs[2], "status="))
	}
	return out
}

func TestNodeWithCertificate(t *testing.T) {
	f, o := newFixture(t, certConfig(t))
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	want := []string{"image-info=ok", "metadata=ok", "hostname=ok", "render=ok", "containerd=ok", "images=skip", "kubelet-start=ok", "kubelet-healthy=ok"}
	if got := f.lines(); !slices.Equal(got, want) {
		t.Errorf("steps = %q, want %q\n%s", got, want, f.steps.String())
	}
	if want := []string{"systemctl restart containerd.service", "systemctl start kubelet.service"}; !slices.Equal(f.commands, want) {
		t.Errorf("commands = %q, want %q", f.commands, want)
	}
	if f.hostname != "node-1" {
		t.Errorf("hostname = %q", f.hostname)
	}
	if b, _ := os.ReadFile(filepath.Join(f.root, "etc/hostname")); string(b) != "node-1\n" {
		t.Errorf("/etc/hostname = %q", b)
	}
	for p, mode := range map[string]os.FileMode{
		"etc/kubernetes/kubelet.conf":                   0o600,
		"var/lib/kubelet/config.yaml":                   0o644,
		"etc/containerd/config.toml":                    0o644,
		"var/lib/kubelet/pki/kubelet-client-imgctl.pem": 0o600,
		"etc/kubernetes/pki/ca.crt":                     0o644,
		"var/lib/kubelet/kubeadm-flags.env":             0o644,
	} {
		st, err := os.Stat(filepath.Join(f.root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %o, want %o", p, st.Mode().Perm(), mode)
		}
	}
	if !strings.Contains(f.steps.String(), `sandbox="registry.k8s.io/pause:3.4.1 (not baked: pulled at the first pod)"`) {
		t.Errorf("render line does not name the sandbox image to pull:\n%s", f.steps.String())
	}
	if !strings.Contains(f.steps.String(), "source=\"file "+filepath.Join(f.root, "etc/imgctl/node.yaml")+"\"") {
		t.Errorf("metadata line does not name the source:\n%s", f.steps.String())
	}
	// No temp files left behind.
	filepath.WalkDir(f.root, func(p string, d os.DirEntry, err error) error {
		if strings.Contains(d.Name(), ".tmp") {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

func TestNodeWithTokenRunsKubeadm(t *testing.T) {
	f, o := newFixture(t, tokenConfig)
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if len(f.commands) != 2 || !strings.HasPrefix(f.commands[1], "kubeadm join --config ") {
		t.Errorf("commands = %q", f.commands)
	}
	if got := f.lines(); !slices.Contains(got, "kubeadm=ok") || slices.Contains(got, "kubelet-start=ok") {
		t.Errorf("steps = %q", got)
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		setup    func(f *fixture, o *Options)
		failStep string
		errHas   []string
		commands int
	}{
		{name: "missing required field", yaml: strings.Replace(tokenConfig, "    apiServer: https://10.0.0.10:6443\n", "", 1),
			failStep: "metadata", errHas: []string{"spec.cluster.apiServer"}},
		{name: "unknown role", yaml: strings.Replace(tokenConfig, "role: node", "role: worker", 1),
			failStep: "metadata", errHas: []string{"spec.role", "worker"}},
		{name: "no metadata anywhere", failStep: "metadata", errHas: []string{"file", "node.yaml"}},
		{name: "unreachable metadata server", setup: func(f *fixture, o *Options) {
			o.Cmdline = "imgctl.metadata=http://" + closedAddr(t) + " imgctl.metadata-order=imgctl"
		}, failStep: "metadata", errHas: []string{"imgctl", "2 attempts"}},
		{name: "unknown provider", setup: func(f *fixture, o *Options) { o.Cmdline = "imgctl.metadata-order=imgctl,dhcp" },
			failStep: "metadata", errHas: []string{`"dhcp"`}},
		{name: "no image.json", yaml: tokenConfig, setup: func(f *fixture, o *Options) { os.Remove(filepath.Join(f.root, imageinfo.Path)) },
			failStep: "image-info", errHas: []string{"image.json"}},
		{name: "kubelet never healthy", yaml: certConfig(t), setup: func(f *fixture, o *Options) { f.healthy = false },
			failStep: "kubelet-healthy", errHas: []string{"did not answer within", "connection refused"}, commands: 2},
		{name: "containerd restart fails", yaml: tokenConfig, setup: func(f *fixture, o *Options) {
			f.cmdErr = map[string]error{"systemctl restart containerd.service": errors.New("exit status 1")}
		}, failStep: "containerd", errHas: []string{"exit status 1"}, commands: 1},
		{name: "failing pre-configure hook", yaml: tokenConfig, setup: func(f *fixture, o *Options) {
			p := filepath.Join(f.root, "etc/imgctl/hooks.d/pre-configure.d/10-fail")
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte("#!/bin/sh\necho \"role=$IMGCTL_ROLE\" >&2\nexit 3\n"), 0o755)
		}, failStep: "hook", errHas: []string{"10-fail", "role=node"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, o := newFixture(t, tc.yaml)
			if tc.setup != nil {
				tc.setup(f, &o)
			}
			start := time.Now()
			err := Run(context.Background(), o)
			if err == nil {
				t.Fatalf("no error\n%s", f.steps.String())
			}
			if time.Since(start) > 10*time.Second {
				t.Errorf("took %v: not bounded", time.Since(start))
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			lines := f.lines()
			if len(lines) == 0 || lines[len(lines)-1] != tc.failStep+"=fail" {
				t.Errorf("last step = %q, want %s=fail\n%s", lines, tc.failStep, f.steps.String())
			}
			if !strings.Contains(f.steps.String(), "err=") {
				t.Errorf("fail line carries no err=:\n%s", f.steps.String())
			}
			if len(f.commands) != tc.commands {
				t.Errorf("commands run = %q, want %d", f.commands, tc.commands)
			}
			if tc.commands == 0 {
				if _, err := os.Stat(filepath.Join(f.root, "etc/containerd/config.toml")); err == nil {
					t.Error("configuration written despite the failure")
				}
			}
		})
	}
}

func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// writeArchive writes a minimal OCI archive (index.json with a name annotation) at p under root.
func writeArchive(t *testing.T, root, p, name string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	idx := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064d","size":1,"annotations":{"io.containerd.image.name":%q}}]}`, 0, name)
	for _, f := range []struct{ name, body string }{{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`}, {"index.json", idx}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	if err := writeFile(root, p, 0o644, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func TestBakedImagesAreImportedAndPinTheSandbox(t *testing.T) {
	f, o := newFixture(t, certConfig(t))
	writeArchive(t, f.root, ImagesDir+"/pause.tar", "registry.k8s.io/pause:3.4.1")
	writeArchive(t, f.root, ImagesDir+"/coredns.tar", "registry.k8s.io/coredns/coredns:v1.8.0")
	writeFile(f.root, ImagesDir+"/README", 0o644, []byte("not an archive"))
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	want := []string{
		"systemctl restart containerd.service",
		"ctr --address /run/containerd/containerd.sock --namespace k8s.io images import " + filepath.Join(f.root, ImagesDir, "coredns.tar"),
		"ctr --address /run/containerd/containerd.sock --namespace k8s.io images import " + filepath.Join(f.root, ImagesDir, "pause.tar"),
		"systemctl start kubelet.service",
	}
	if !slices.Equal(f.commands, want) {
		t.Errorf("commands =\n%s\nwant\n%s", strings.Join(f.commands, "\n"), strings.Join(want, "\n"))
	}
	b, _ := os.ReadFile(filepath.Join(f.root, "etc/containerd/config.toml"))
	if !strings.Contains(string(b), `sandbox_image = "registry.k8s.io/pause:3.4.1"`) {
		t.Errorf("containerd config does not use the baked pause image:\n%s", b)
	}
	if !strings.Contains(f.steps.String(), "step=images status=ok") || !strings.Contains(f.steps.String(), "sandbox=registry.k8s.io/pause:3.4.1") {
		t.Errorf("steps:\n%s", f.steps.String())
	}

	// A broken archive fails the render step, naming the file.
	f2, o2 := newFixture(t, certConfig(t))
	writeFile(f2.root, ImagesDir+"/bad.tar", 0o644, []byte("garbage"))
	err := Run(context.Background(), o2)
	if err == nil || !strings.Contains(err.Error(), "/usr/lib/imgctl/images/bad.tar") {
		t.Errorf("broken archive: err = %v", err)
	}
}

// TestNodeSkipsControlPlaneOnlyImages: a node never runs the API server, controller-manager,
// scheduler or etcd (static pods of control-plane machines), so an image that bakes the
// control-plane images for all roles imports only the rest on a node (kube-proxy, CoreDNS, pause,
// anything else) and says on its images line what it left out.
func TestNodeSkipsControlPlaneOnlyImages(t *testing.T) {
	f, o := newFixture(t, certConfig(t))
	repo := "registry.imgctl.invalid/kubernetes/"
	for _, im := range []struct{ file, name string }{
		{"kube-apiserver.tar", repo + "kube-apiserver:v1.21.13"},
		{"kube-controller-manager.tar", repo + "kube-controller-manager:v1.21.13"},
		{"kube-scheduler.tar", repo + "kube-scheduler:v1.21.13"},
		{"kube-proxy.tar", repo + "kube-proxy:v1.21.13"},
		{"etcd.tar", repo + "etcd:3.5.0-0"},
		{"coredns.tar", repo + "coredns:v1.8.0"},
		{"pause.tar", repo + "pause:3.4.1"},
		{"probe.tar", "registry.example/probe:1"},
	} {
		writeArchive(t, f.root, ImagesDir+"/"+im.file, im.name)
	}
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	var imported []string
	for _, c := range f.commands {
		if rest, ok := strings.CutPrefix(c, "ctr --address /run/containerd/containerd.sock --namespace k8s.io images import "+filepath.Join(f.root, ImagesDir)+"/"); ok {
			imported = append(imported, rest)
		}
	}
	if want := []string{"coredns.tar", "kube-proxy.tar", "pause.tar", "probe.tar"}; !slices.Equal(imported, want) {
		t.Errorf("imported %q, want %q", imported, want)
	}
	for _, want := range []string{
		"step=images status=ok",
		"imported=" + repo + "coredns:v1.8.0," + repo + "kube-proxy:v1.21.13," + repo + "pause:3.4.1,registry.example/probe:1",
		"skipped=" + repo + "etcd:3.5.0-0," + repo + "kube-apiserver:v1.21.13," + repo + "kube-controller-manager:v1.21.13," + repo + "kube-scheduler:v1.21.13",
		`skipped-why="control-plane only: a node never runs them"`,
	} {
		if !strings.Contains(f.steps.String(), want) {
			t.Errorf("steps lack %s:\n%s", want, f.steps.String())
		}
	}
}

// TestMetadataCredentialsNotShown: the console's step lines and the error show neither the
// metadata URL's user info nor the credential, whether the credential is refused for plain http
// (before any request) or sent with imgctl.metadata-insecure=1.
func TestMetadataCredentialsNotShown(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, tokenConfig)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	base := "imgctl.metadata-order=imgctl imgctl.metadata=http://user:secret@" + host + "/boot imgctl.credential=s3cret"

	f, o := newFixture(t, "")
	o.Cmdline = base
	err := Run(context.Background(), o)
	want := "imgctl: http://" + host + "/boot/v1/nodeconfig: refusing to send the node credential over plain http " +
		"(anyone on the boot network can read it): use an https:// URL, or add imgctl.metadata-insecure=1 to the kernel command line to allow it"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v\nwant %q", err, want)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("the server saw %d requests before the refusal, want none", n)
	}
	for _, out := range []string{f.steps.String(), fmt.Sprint(err)} {
		if strings.Contains(out, "secret") || strings.Contains(out, "s3cret") || strings.Contains(out, "user@") {
			t.Errorf("shows a credential:\n%s", out)
		}
	}

	f, o = newFixture(t, "")
	o.Cmdline = base + " imgctl.metadata-insecure=1"
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if !strings.Contains(f.steps.String(), `step=metadata status=ok`) ||
		!strings.Contains(f.steps.String(), `source="imgctl http://`+host+`/boot/v1/nodeconfig"`) {
		t.Errorf("metadata step line:\n%s", f.steps.String())
	}
	if strings.Contains(f.steps.String(), "secret") || strings.Contains(f.steps.String(), "user@") {
		t.Errorf("shows a credential:\n%s", f.steps.String())
	}
}

// failingFixture makes every way Run could touch the host fail the test: commands, the
// hostname, the readiness probes.
func failingFixture(t *testing.T, o *Options) {
	o.Run = func(ctx context.Context, name string, args ...string) error {
		t.Errorf("ran %s %q", name, args)
		return errors.New("must not run")
	}
	o.Kubeadm = func(ctx context.Context, out io.Writer, args ...string) error {
		t.Errorf("ran kubeadm %q", args)
		return errors.New("must not run")
	}
	o.SetHostname = func(n string) error {
		t.Errorf("set the hostname to %q", n)
		return errors.New("must not set the hostname")
	}
	o.CRIProbe = func(context.Context) (health.CRIInfo, error) {
		t.Error("probed containerd")
		return health.CRIInfo{}, errors.New("must not probe")
	}
	o.KubeletProbe = func(context.Context) error {
		t.Error("probed the kubelet")
		return errors.New("must not probe")
	}
}

// hookMarker installs an executable hook for phase that creates a marker file, and returns the
// marker's path.
func hookMarker(t *testing.T, root, phase string) string {
	t.Helper()
	marker := filepath.Join(root, "hook-ran-"+phase)
	p := filepath.Join(root, "etc/imgctl/hooks.d", phase+".d", "10-mark")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho \"$IMGCTL_NODE_NAME\" > "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return marker
}

// TestDryRun: configure with DryRun writes every file into Root and runs nothing: no command,
// no hook, no sethostname, no probe; the skipped actions are on the console.
func TestDryRun(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		skipped    []string
		files      []string
	}{
		{"node with certificate", certConfig(t), []string{"containerd=skip", "images=skip", "kubelet-start=skip", "kubelet-healthy=skip"},
			[]string{"var/lib/kubelet/config.yaml", "etc/kubernetes/kubelet.conf"}},
		{"node with token", tokenConfig, []string{"containerd=skip", "images=skip", "kubeadm=skip", "kubelet-healthy=skip"},
			[]string{render.KubeadmConfigPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, o := newFixture(t, tc.yaml)
			o.DryRun = true
			failingFixture(t, &o)
			pre, post := hookMarker(t, f.root, "pre-configure"), hookMarker(t, f.root, "post-configure")
			writeArchive(t, f.root, ImagesDir+"/pause.tar", "registry.k8s.io/pause:3.4.1")
			if err := Run(context.Background(), o); err != nil {
				t.Fatalf("%v\n%s", err, f.steps.String())
			}
			for _, m := range []string{pre, post} {
				if _, err := os.Stat(m); err == nil {
					t.Errorf("hook ran: %s exists", m)
				}
			}
			want := append([]string{"image-info=ok", "metadata=ok", "hostname=ok", "hook=skip", "render=ok"}, tc.skipped...)
			want = append(want, "hook=skip")
			if got := f.lines(); !slices.Equal(got, want) {
				t.Errorf("steps = %q, want %q\n%s", got, want, f.steps.String())
			}
			out := f.steps.String()
			for _, s := range []string{
				`step=hostname status=ok`, `sethostname="skipped (dry run)"`,
				`step=hook status=skip`, `hook=10-mark reason="dry run"`,
				`step=containerd status=skip`, `command="systemctl restart containerd.service"`,
				`step=images status=skip`, `reason="dry run"`,
			} {
				if !strings.Contains(out, s) {
					t.Errorf("steps do not contain %s:\n%s", s, out)
				}
			}
			name := map[bool]string{true: "node-1", false: "node-2"}[tc.yaml != tokenConfig]
			if b, err := os.ReadFile(filepath.Join(f.root, "etc/hostname")); err != nil || string(b) != name+"\n" {
				t.Errorf("etc/hostname = %q, %v", b, err)
			}
			for _, p := range append([]string{"etc/containerd/config.toml"}, tc.files...) {
				if _, err := os.Stat(filepath.Join(f.root, p)); err != nil {
					t.Errorf("%s not rendered: %v", p, err)
				}
			}
		})
	}
}

// TestInvalidNodeName: a node name that is not a valid Kubernetes node name and host name fails
// the metadata step, naming the field, before anything is written, set or run.
func TestInvalidNodeName(t *testing.T) {
	withName := func(n string) string {
		return strings.Replace(tokenConfig, "  name: node-2\n", fmt.Sprintf("  name: %q\n", n), 1)
	}
	noName := strings.Replace(tokenConfig, "metadata:\n  name: node-2\n", "", 1)
	for _, tc := range []struct {
		name, yaml, hostname string
		errHas               []string
	}{
		{name: "dot dot slash", yaml: withName("../x"), errHas: []string{`metadata.name: "../x"`}},
		{name: "space", yaml: withName("a b"), errHas: []string{`metadata.name: "a b"`}},
		{name: "leading dash", yaml: withName("-x"), errHas: []string{`metadata.name: "-x"`}},
		{name: "300 characters", yaml: withName(strings.Repeat("a", 300)), errHas: []string{"metadata.name: \"aaaa"}},
		{name: "upper case", yaml: withName("Node-1"), errHas: []string{`metadata.name: "Node-1"`}},
		{name: "label of 64", yaml: withName(strings.Repeat("a", 64) + ".x"), errHas: []string{"metadata.name: \"aaaa"}},
		{name: "longer than a host name", yaml: withName(strings.Repeat("a.", 32) + "b"), errHas: []string{"metadata.name", "at most 64"}},
		{name: "newline", yaml: withName("a\nb"), errHas: []string{`metadata.name: "a\nb"`}},
		{name: "host name fallback", yaml: noName, hostname: "my_host",
			errHas: []string{`metadata.name is empty and the host name is not a valid node name: "my_host" is not a DNS-1123 subdomain`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, o := newFixture(t, tc.yaml)
			failingFixture(t, &o)
			if tc.hostname != "" {
				o.Hostname = func() (string, error) { return tc.hostname, nil }
			}
			marker := hookMarker(t, f.root, "pre-configure")
			err := Run(context.Background(), o)
			if err == nil {
				t.Fatalf("no error\n%s", f.steps.String())
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if got := f.lines(); !slices.Equal(got, []string{"image-info=ok", "metadata=fail"}) {
				t.Errorf("steps = %q, want the metadata step to fail\n%s", got, f.steps.String())
			}
			for _, p := range []string{"etc/hostname", "etc/containerd/config.toml", filepath.Base(marker)} {
				if _, err := os.Stat(filepath.Join(f.root, p)); err == nil {
					t.Errorf("%s written despite the invalid name", p)
				}
			}
		})
	}
	// A valid host name, lower-cased, stands in for a missing metadata.name.
	f, o := newFixture(t, noName)
	o.DryRun = true
	failingFixture(t, &o)
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if b, _ := os.ReadFile(filepath.Join(f.root, "etc/hostname")); string(b) != "localhost-x\n" {
		t.Errorf("etc/hostname = %q", b)
	}
}

// reportServer is an imgctl metadata server: the NodeConfig for the credential, and the boot
// reports it accepts (nodeapi.ParseReport, as imgctl serve checks them).
func reportServer(t *testing.T) (*httptest.Server, func() []*nodeapi.Report) {
	var mu sync.Mutex
	var reports []*nodeapi.Report
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if nodeapi.CredentialFromHeader(r.Header.Get(nodeapi.AuthorizationHeader)) != "s3cret" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/boot"+nodeapi.NodeConfigPath:
			fmt.Fprint(w, tokenConfig)
		case r.Method == http.MethodPost && r.URL.Path == "/boot"+nodeapi.ReportPath:
			body, _ := io.ReadAll(io.LimitReader(r.Body, nodeapi.MaxReportBytes+1))
			rep, err := nodeapi.ParseReport(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			reports = append(reports, rep)
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []*nodeapi.Report {
		mu.Lock()
		defer mu.Unlock()
		return append([]*nodeapi.Report(nil), reports...)
	}
}

// TestReport: configure reports its steps, the role and the root digest (from the command
// line) to the metadata server when it ends, ok or failed; not in a dry run, and not without a
// metadata server and credential.
func TestReport(t *testing.T) {
	srv, reports := reportServer(t)
	digest := "sha256:" + strings.Repeat("cd", 32)
	line := "imgctl.metadata-order=imgctl imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret imgctl.metadata-insecure=1" +
		" imgctl.root=http://10.0.0.1/blobs/" + digest

	f, o := newFixture(t, "")
	o.Cmdline = line
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	got := reports()
	if len(got) != 1 {
		t.Fatalf("%d reports, want 1", len(got))
	}
	r := got[0]
	var names []string
	for _, s := range r.Steps {
		names = append(names, s.Name+"="+s.Status)
	}
	if r.Phase != nodeapi.PhaseConfigure || !r.OK || r.Role != "node" || r.RootDigest != digest || !slices.Equal(names, f.lines()) {
		t.Errorf("report = %+v, steps %q; want configure, ok, node, %s, steps %q", r, names, digest, f.lines())
	}

	f, o = newFixture(t, "")
	o.Cmdline = line
	f.healthy = false
	if err := Run(context.Background(), o); err == nil {
		t.Fatal("Run with an unhealthy kubelet succeeded")
	}
	if got := reports(); len(got) != 2 || got[1].OK || got[1].Failed != "kubelet-healthy" || got[1].Role != "node" {
		t.Errorf("reports = %d, last %+v; want a failed report naming kubelet-healthy", len(got), got[len(got)-1])
	}

	// A step's error never carries a NodeConfig secret to the server.
	f, o = newFixture(t, "")
	o.Cmdline = line
	f.cmdErr = map[string]error{"kubeadm join --config " + render.KubeadmConfigPath: errors.New("token abcdef.0123456789abcdef refused")}
	if err := Run(context.Background(), o); err == nil {
		t.Fatal("Run with a failing kubeadm succeeded")
	}
	got = reports()
	if len(got) != 3 || got[2].Failed != "kubeadm" {
		t.Fatalf("%d reports, last %+v; want a third naming kubeadm", len(got), got[len(got)-1])
	}
	for _, st := range got[2].Steps {
		if st.Name == "kubeadm" && st.Error != "kubeadm join: token REDACTED refused" {
			t.Errorf("kubeadm step error in the report = %q", st.Error)
		}
	}

	f, o = newFixture(t, "")
	o.Cmdline = line
	o.DryRun = true
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	f, o = newFixture(t, tokenConfig)
	o.Cmdline = "imgctl.metadata-order=file imgctl.metadata=" + srv.URL + "/boot"
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if got := reports(); len(got) != 3 {
		t.Errorf("%d reports after a dry run and a run without a credential, want still 3", len(got))
	}
}

// TestReportRefused: a server that refuses the report (400) or never answers costs a log line
// and a bounded wait, never the configuration's result.
func TestReportRefused(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case nodeapi.NodeConfigPath:
			fmt.Fprint(w, tokenConfig)
		case nodeapi.ReportPath:
			if posts.Add(1) > 1 {
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done() // hangs
				return
			}
			http.Error(w, "report: time: required", http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	for _, want := range []string{"400 Bad Request: report: time: required", "context deadline exceeded"} {
		f, o := newFixture(t, "")
		var logs bytes.Buffer
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.Cmdline = "imgctl.metadata-order=imgctl imgctl.metadata=" + srv.URL + " imgctl.credential=s3cret imgctl.metadata-insecure=1"
		o.Report = report.Options{Timeout: 200 * time.Millisecond, Backoff: time.Millisecond, Budget: time.Second}
		start := time.Now()
		if err := Run(context.Background(), o); err != nil {
			t.Fatalf("%v\n%s", err, f.steps.String())
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("Run took %s", el)
		}
		if !strings.Contains(logs.String(), `level=WARN msg="boot report not sent" phase=configure`) || !strings.Contains(logs.String(), want) {
			t.Errorf("log = %s, want a warning with %q", logs.String(), want)
		}
	}
}
