package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

// distRegistry is Debian's docker-registry (distribution 2.8) on loopback, serving HTTPS with a
// certificate from a throwaway CA and requiring htpasswd (basic) auth.
type distRegistry struct {
	host     string // 127.0.0.1:PORT
	caFile   string // PEM of the CA that signed the server certificate
	user     string
	password string
	log      *bootenv.Console
}

// startDistRegistry starts docker-registry with TLS and htpasswd auth, waits (at most 30s) until
// it answers, and stops it when the test ends.
func startDistRegistry(t *testing.T) *distRegistry {
	t.Helper()
	testenv.Integration(t, "Debian's docker-registry with TLS and htpasswd auth")
	testenv.Tools(t, "docker-registry")
	dir := t.TempDir()
	r := &distRegistry{user: "imgctl", password: "s3cret-" + rand.Text()[:8], log: &bootenv.Console{}}

	// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgctl test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	r.caFile = filepath.Join(dir, "ca.pem")
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	writePEM(t, r.caFile, "CERTIFICATE", caDER)
	writePEM(t, certFile, "CERTIFICATE", srvDER)
	writePEM(t, keyFile, "PRIVATE KEY", srvKeyDER)

	hash, err := bcrypt.GenerateFromPassword([]byte(r.password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(r.user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// A free port: taken, released, then given to the registry.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.host = l.Addr().String()
	l.Close()
	config := filepath.Join(dir, "config.yml")
	writeFile(t, config, fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: %s
  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: imgctl-test
    path: %s
`, filepath.Join(dir, "data"), r.host, rand.Text(), certFile, keyFile, htpasswd))

	cmd := exec.Command("docker-registry", "serve", config)
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("docker-registry log:\n%s", r.log.String())
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("https://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
			err = fmt.Errorf("GET /v2/ without credentials: status %s, want 401", resp.Status)
		}
		select {
		case werr := <-exited:
			t.Fatalf("docker-registry exited (%v) before answering:\n%s", werr, r.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s did not answer within 30s: %v\n%s", r.host, err, r.log.String())
		}
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	writeFile(t, path, string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// clientEnv is the environment of a registry client (imgctl or cosign): a fresh HOME, the
// docker config directory cfgDir (credentials, if any, in cfgDir/config.json), and, if caFile
// is set, trust in that CA alone (SSL_CERT_FILE).
func clientEnv(t *testing.T, cfgDir, caFile string) []string {
	t.Helper()
	home := t.TempDir()
	env := []string{"HOME=" + home, "DOCKER_CONFIG=" + cfgDir, "PATH=" + os.Getenv("PATH"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "TUF_ROOT=" + filepath.Join(home, "tuf"),
		"SOURCE_DATE_EPOCH=1764115200"}
	if caFile != "" {
		env = append(env, "SSL_CERT_FILE="+caFile)
	}
	return env
}

// dockerLogin writes a docker config with user:password for host into a new directory and
// returns the directory (what `docker login` would leave).
func dockerLogin(t *testing.T, host, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
	}}}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// imgctlEnv runs the built imgctl with its own store and cache under dir and the environment
// env (nothing inherited), returning standard output and, on failure, an error with its
// standard error.
func imgctlEnv(ctx context.Context, t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, imgctlBin, append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache")}, args...)...)
	cmd.Dir = dir
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("imgctl %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// buildSmallImages builds n small images (rootfs target, one local file each) into dir's store
// and returns their digests.
func buildSmallImages(ctx context.Context, t *testing.T, dir string, env []string, n int) []string {
	t.Helper()
	var out []string
	for i := range n {
		content := filepath.Join(dir, "content", fmt.Sprint(i))
		if err := os.MkdirAll(filepath.Join(content, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(content, "etc", "motd"), fmt.Sprintf("image %d\n", i))
		spec := filepath.Join(dir, fmt.Sprintf("node-%d.yaml", i))
		writeFile(t, spec, "apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata:\n  name: registry-e2e\nspec:\n  kubernetes:\n    version: 1.21.13\n"+
			"  sourceDateEpoch: 1700000000\n  layers:\n    - role: extra\n      sources:\n        - \"file://"+content+"/\"\n")
		stdout, err := imgctlEnv(ctx, t, dir, env, "-q", "build", "-f", spec, "--target", "rootfs", "--lock", filepath.Join(dir, "imgctl.lock"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		out = append(out, lines[len(lines)-1])
	}
	return out
}

// TestRealRegistryTLSAndAuth: push, pull, push --channel and registry channels against a real
// registry (distribution 2.8) over TLS with a private CA and htpasswd auth, credentials from a
// docker config; and without credentials, with wrong ones, or without trusting the CA, the
// errors say what is wrong.
func TestRealRegistryTLSAndAuth(t *testing.T) {
	reg := startDistRegistry(t)
	ctx := t.Context()
	dir := t.TempDir()
	good := clientEnv(t, dockerLogin(t, reg.host, reg.user, reg.password), reg.caFile)
	img := buildSmallImages(ctx, t, dir, good, 2)
	repo := reg.host + "/imgctl/node"
	must := func(dir string, env []string, args ...string) string {
		t.Helper()
		out, err := imgctlEnv(ctx, t, dir, env, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	// Refusals first, while the registry is empty.
	for _, tc := range []struct {
		name string
		env  []string
		want []string
	}{
		{"no credentials", clientEnv(t, t.TempDir(), reg.caFile), []string{
			"registry " + reg.host + " refused access (401 Unauthorized",
			"no credentials for " + reg.host + " were found in ",
			"docker login " + reg.host,
		}},
		{"wrong password", clientEnv(t, dockerLogin(t, reg.host, reg.user, "wrong"), reg.caFile), []string{
			"registry " + reg.host + " rejected the credentials found for it in ",
			"they are wrong or expired",
			"docker login " + reg.host,
		}},
		{"untrusted CA", clientEnv(t, dockerLogin(t, reg.host, reg.user, reg.password), ""), []string{
			"certificate signed by unknown authority",
		}},
	} {
		for _, args := range [][]string{{"push", img[0], repo}, {"pull", repo + ":" + "1"}} {
			_, err := imgctlEnv(ctx, t, dir, tc.env, args...)
			if err == nil {
				t.Fatalf("%s: imgctl %s succeeded", tc.name, strings.Join(args, " "))
			}
			t.Logf("%s: %v", tc.name, err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: imgctl %s: error lacks %q:\n%v", tc.name, strings.Join(args, " "), w, err)
				}
			}
			if strings.Contains(err.Error(), "HEAD responses have no body") {
				t.Errorf("%s: imgctl %s: error still has go-containerregistry's HEAD note:\n%v", tc.name, strings.Join(args, " "), err)
			}
		}
	}

	// push --channel, then pull into an empty store.
	must(dir, good, "promote", img[0], "--to", "nightly")
	out := must(dir, good, "push", "nightly", repo, "--channel", "nightly")
	if !strings.Contains(out, repo+"@"+img[0]) {
		t.Errorf("push printed %q, want %s@%s", out, repo, img[0])
	}
	other := t.TempDir()
	out = must(other, good, "pull", repo+":nightly")
	if !strings.Contains(out, img[0]) {
		t.Errorf("pull printed %q, want %s", out, img[0])
	}
	if out := must(other, good, "store", "verify"); !strings.Contains(out, ": ok") {
		t.Errorf("store verify after pull:\n%s", out)
	}
	if out := must(other, good, "images", "list"); !strings.Contains(out, img[0][7:19]) {
		t.Errorf("images list after pull lacks %s:\n%s", img[0][7:19], out)
	}
	// By digest too.
	if out := must(t.TempDir(), good, "pull", repo+"@"+img[0]); !strings.Contains(out, img[0]) {
		t.Errorf("pull by digest printed %q", out)
	}

	// Channels kept in the registry: promote, rollback, list, history.
	must(dir, good, "push", img[1], repo)
	must(dir, good, "promote", img[1], "--to", "nightly", "--registry", repo)
	must(dir, good, "promote", "nightly", "--to", "staging", "--registry", repo)
	var e struct {
		To  string
		Seq int
	}
	if err := json.Unmarshal([]byte(must(dir, good, "-o", "json", "rollback", "nightly", "--registry", repo)), &e); err != nil || e.To != img[0] || e.Seq != 3 {
		t.Errorf("rollback nightly in the registry: %+v (%v), want seq 3 to %s", e, err, img[0])
	}
	list := must(dir, good, "channel", "list", "--registry", repo)
	if !regexp.MustCompile(`nightly\s.*`+img[0][7:19]).MatchString(list) || !regexp.MustCompile(`staging\s.*`+img[1][7:19]).MatchString(list) {
		t.Errorf("channel list --registry: want nightly at %s and staging at %s:\n%s", img[0][7:19], img[1][7:19], list)
	}
	// Another machine, with only the registry, sees the same channel and pulls its image.
	if out := must(t.TempDir(), good, "pull", repo+":staging"); !strings.Contains(out, img[1]) {
		t.Errorf("pull :staging printed %q, want %s", out, img[1])
	}
	// Registry channels refuse without credentials too, naming the registry.
	_, err := imgctlEnv(ctx, t, dir, clientEnv(t, t.TempDir(), reg.caFile), "channel", "list", "--registry", repo)
	if err == nil || !strings.Contains(err.Error(), "no credentials for "+reg.host+" were found") {
		t.Errorf("channel list --registry without credentials: %v", err)
	}
}

// cosignBin returns the cosign CLI that `make cosign` builds (scripts/build-go-tool.sh cosign)
// into .cache/tools/cosign/VERSION, VERSION being the one test/tools/cosign pins;
// $IMGCTL_COSIGN overrides the path.
func cosignBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("IMGCTL_COSIGN"); p != "" {
		testenv.Files(t, p)
		return p
	}
	data, err := os.ReadFile(filepath.Join("tools", "cosign", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require github\.com/sigstore/cosign/v2 (v\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("test/tools/cosign/go.mod does not pin github.com/sigstore/cosign/v2")
	}
	p, err := filepath.Abs(filepath.Join("..", ".cache", "tools", "cosign", string(m[1]), "cosign"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "cosign %s is not built (%v): run `make cosign` (scripts/build-go-tool.sh cosign)", m[1], err)
	}
	return p
}

// TestCosignVerifiesImgctlSignature: an image signed with `imgctl sign` (an ed25519 key from
// `imgctl key generate`) and pushed with `imgctl push` to a real registry (TLS, htpasswd auth)
// verifies with the real `cosign verify --key imgctl.pub`, which finds the signature by its
// default lookup (tag sha256-<hex>.sig) and as an OCI 1.1 referrer (--experimental-oci11);
// with another key, cosign refuses it.
func TestCosignVerifiesImgctlSignature(t *testing.T) {
	cosign := cosignBin(t)
	reg := startDistRegistry(t)
	ctx := t.Context()
	dir := t.TempDir()
	env := clientEnv(t, dockerLogin(t, reg.host, reg.user, reg.password), reg.caFile)
	img := buildSmallImages(ctx, t, dir, env, 1)[0]
	repo := reg.host + "/imgctl/signed"
	keys, other := filepath.Join(dir, "keys"), filepath.Join(dir, "other")
	for _, args := range [][]string{
		{"key", "generate", "--dir", keys},
		{"key", "generate", "--dir", other},
		{"sign", img, "--key", filepath.Join(keys, "imgctl.key")},
		{"push", img, repo},
	} {
		if _, err := imgctlEnv(ctx, t, dir, env, args...); err != nil {
			t.Fatal(err)
		}
	}

	// An empty trusted root: with a key and no transparency log, cosign needs none, and given
	// one it does not try to fetch Sigstore's from the internet (TUF).
	trustedRoot := filepath.Join(dir, "trusted_root.json")
	writeFile(t, trustedRoot, `{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`)
	verify := func(pub string, flags ...string) (string, string, error) {
		args := append([]string{"verify", "--key", pub, "--insecure-ignore-tlog=true", "--trusted-root", trustedRoot, "--output", "json"}, flags...)
		cmd := exec.CommandContext(ctx, cosign, append(args, repo+"@"+img)...)
		cmd.Env = env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		t.Logf("$ cosign verify --key %s --insecure-ignore-tlog=true --trusted-root EMPTY %s %s@%s\n%s%s(exit: %v)", pub, strings.Join(flags, " "), repo, img, out.String(), errb.String(), err)
		return out.String(), errb.String(), err
	}
	out, stderr, err := verify(filepath.Join(keys, "imgctl.pub"))
	if err != nil {
		t.Fatalf("cosign verify with the signing key failed: %v\n%s", err, stderr)
	}
	var verified []struct {
		Critical struct {
			Image struct {
				DockerManifestDigest string `json:"docker-manifest-digest"`
			}
			Type string
		}
	}
	if err := json.Unmarshal([]byte(out), &verified); err != nil || len(verified) != 1 ||
		verified[0].Critical.Image.DockerManifestDigest != img || verified[0].Critical.Type != "cosign container image signature" {
		t.Errorf("cosign verify printed %q (%v), want one signature of %s", out, err, img)
	}
	if !strings.Contains(stderr, "The signatures were verified against the specified public key") {
		t.Errorf("cosign verify did not say it checked the key:\n%s", stderr)
	}

	// The same signature as an OCI 1.1 referrer (distribution 2.8 has no Referrers API: the
	// fallback index tagged sha256-<hex> lists it), which cosign reads with this flag only.
	if out, stderr, err := verify(filepath.Join(keys, "imgctl.pub"), "--experimental-oci11"); err != nil || !strings.Contains(out, img) {
		t.Errorf("cosign verify --experimental-oci11 (the signature as a referrer): %v\n%s%s", err, out, stderr)
	}
	_, stderr, err = verify(filepath.Join(other, "imgctl.pub"))
	if err == nil {
		t.Fatal("cosign verify with another key succeeded")
	}
	if !strings.Contains(stderr, "no matching signatures") {
		t.Errorf("cosign verify with another key failed, but not for want of a matching signature:\n%s", stderr)
	}
}
