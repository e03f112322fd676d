package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/awsfake"
)

// TestMain stops the moto_server the AWS tests share (awsfake.MotoForTest) after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

// run executes the CLI in-process with its own store and cache.
func run(t *testing.T, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	a := newApp(strings.NewReader(""), &out, &errb)
	cmd := a.root()
	cmd.SetArgs(append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache")}, args...))
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func writeSpec(t *testing.T, dir string, sources ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata:\n  name: cli-test\nspec:\n  kubernetes:\n    version: 1.21.13\n  sourceDateEpoch: 1700000000\n  layers:\n    - role: extra\n      sources:\n")
	for _, s := range sources {
		b.WriteString("        - \"" + s + "\"\n")
	}
	p := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildPrintsDigestLast(t *testing.T) {
	dir := t.TempDir()
	content := filepath.Join(dir, "content")
	os.MkdirAll(filepath.Join(content, "etc"), 0o755)
	os.WriteFile(filepath.Join(content, "etc/motd"), []byte("hi\n"), 0o644)
	specPath := writeSpec(t, dir, "file://"+content+"/")
	lockPath := filepath.Join(dir, "imgctl.lock")

	out, stderr, err := run(t, dir, "build", "-f", specPath, "--lock", lockPath, "--output", filepath.Join(dir, "out"))
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	digest := lines[len(lines)-1]
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 {
		t.Fatalf("last stdout line %q is not an image digest; stdout:\n%s", digest, out)
	}
	if !strings.Contains(stderr, "phases: resolve") || !strings.Contains(stderr, "compose") {
		t.Errorf("stderr lacks the timing summary:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out", "rootfs.tar")); err != nil {
		t.Errorf("--output: %v", err)
	}

	// JSON output, and the image is listed, inspectable by prefix, and verifies.
	out, _, err = run(t, dir, "-o", "json", "build", "-f", specPath, "--lock", lockPath)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Digest  string
		Version string
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Digest != digest {
		t.Fatalf("json build output %q (%v): digest %q, want %q", out, err, res.Digest, digest)
	}
	out, _, err = run(t, dir, "images", "list")
	if err != nil || !strings.Contains(out, res.Version) || !strings.Contains(out, digest[7:19]) {
		t.Errorf("images list (%v):\n%s", err, out)
	}
	out, _, err = run(t, dir, "images", "inspect", digest[7:19])
	if err != nil || !strings.Contains(out, "file://"+content+"/") || !strings.Contains(out, "rootfs.tar") {
		t.Errorf("images inspect (%v):\n%s", err, out)
	}
	out, _, err = run(t, dir, "layers", "list")
	if err != nil || !strings.Contains(out, "extra") {
		t.Errorf("layers list (%v):\n%s", err, out)
	}
	out, _, err = run(t, dir, "store", "verify")
	if err != nil || !strings.Contains(out, ": ok") {
		t.Errorf("store verify (%v):\n%s", err, out)
	}
}

func TestLayersInspect(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.tar")
	bad := filepath.Join(dir, "bad.tar")
	writeTar(t, good, "usr/bin/tool", "etc/conf")
	writeTar(t, bad, "etc/ok", "/etc/shadow")
	out, _, err := run(t, dir, "layers", "inspect", "file://"+good)
	if err != nil || !strings.Contains(out, "entries  2") || !strings.Contains(out, "kind     tar") {
		t.Errorf("inspect good (%v):\n%s", err, out)
	}
	_, _, err = run(t, dir, "layers", "inspect", "file://"+bad)
	if err == nil || !strings.Contains(err.Error(), `"/etc/shadow"`) || !strings.Contains(err.Error(), "absolute path") {
		t.Errorf("inspect bad: err = %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "yaml", "images", "list"}, `expected text or json`},
		{[]string{"build", "--source", "kernal=file:///x.tar"}, `unknown role "kernal"`},
		{[]string{"build", "--source", "kernel"}, "expected ROLE=URI"},
		{[]string{"build", "--k8s", "1.21"}, "1.21"},
		{[]string{"build", "-f", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"build", "--mirror", "nonsense"}, "--mirror"},
		{[]string{"images", "inspect", "feedface"}, "not found"},
	} {
		_, _, err := run(t, dir, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func writeTar(t *testing.T, path string, names ...string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: 1})
		tw.Write([]byte("x"))
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
