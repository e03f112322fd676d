package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/imageinfo"
)

// TestInitRefusesWhenNotPID1 runs `imgctl-node init` on the test machine: it must refuse
// before mounting, deleting or rebooting anything.
func TestInitRefusesWhenNotPID1(t *testing.T) {
	if os.Getenv("IMGCTL_NODE_TEST_MAIN") == "1" {
		os.Args = []string{"imgctl-node", "init"}
		main()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitRefusesWhenNotPID1$")
	cmd.Env = append(os.Environ(), "IMGCTL_NODE_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "step=preflight status=fail") || !strings.Contains(string(out), "PID 1") {
		t.Errorf("output:\n%s", out)
	}
}

// runMain runs main with args in a child process (main exits) and returns its exit code and
// combined output.
func runMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRunMainChild$")
	cmd.Env = append(os.Environ(), "IMGCTL_NODE_TEST_ARGS="+strings.Join(args, "\n"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatal(err)
	return 0, ""
}

// TestRunMainChild is the child of runMain; it does nothing in a normal run.
func TestRunMainChild(t *testing.T) {
	args := os.Getenv("IMGCTL_NODE_TEST_ARGS")
	if args == "" {
		return
	}
	os.Args = append([]string{"imgctl-node"}, strings.Split(args, "\n")...)
	main()
	os.Exit(0)
}

// nodeRoot makes a root directory with image.json, a node.yaml and a pre-configure hook that
// leaves a marker if it runs; it returns the root and the marker's path.
func nodeRoot(t *testing.T) (string, string) {
	t.Helper()
	root := t.TempDir()
	info := &imageinfo.Info{SchemaVersion: imageinfo.SchemaVersion, Name: "n", Kubernetes: "1.21.13", Bootstrap: "1.0.0"}
	b, err := info.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(root, "hook-ran")
	for p, data := range map[string]string{
		imageinfo.Path:          string(b),
		"/etc/imgctl/node.yaml": "apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nmetadata: {name: dry-run-node}\nspec:\n  role: node\n  cluster: {apiServer: \"https://10.0.0.10:6443\"}\n  credentials:\n    bootstrapToken: abcdef.0123456789abcdef\n    caCertHashes: [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]\n",
		"/etc/imgctl/hooks.d/pre-configure.d/10-mark": "#!/bin/sh\ntouch " + marker + "\n",
	} {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root, marker
}

// TestConfigureDryRun: configure --root DIR --dry-run renders into DIR and changes nothing on
// this host (its hostname stays); --root DIR alone and --dry-run alone are refused, naming
// what to add, before anything is read or written.
func TestConfigureDryRun(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	root, marker := nodeRoot(t)
	code, out := runMain(t, "configure", "--root", root, "--dry-run")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if h, _ := os.Hostname(); h != host {
		t.Errorf("the host name changed from %q to %q", host, h)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the pre-configure hook ran")
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/hostname")); err != nil || string(b) != "dry-run-node\n" {
		t.Errorf("DIR/etc/hostname = %q, %v", b, err)
	}
	for _, s := range []string{
		`step=hostname status=ok`, `sethostname="skipped (dry run)"`, `step=hook status=skip`,
		`step=render status=ok`, `step=containerd status=skip`, `step=kubeadm status=skip`, `step=kubelet-healthy status=skip`,
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %s:\n%s", s, out)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"configure", "--root", "DIR"}, "imgctl-node configure: --root DIR without --dry-run: configure would still set this host's hostname"},
		{[]string{"configure", "--dry-run"}, "imgctl-node configure: --dry-run needs --root DIR (not /)"},
		{[]string{"configure", "--dry-run", "--root", "//"}, "--dry-run needs --root DIR (not /)"},
	} {
		root, marker := nodeRoot(t)
		for i := range tc.args {
			tc.args[i] = strings.ReplaceAll(tc.args[i], "DIR", root)
		}
		tc.want = strings.Replace(tc.want, "--root DIR without", "--root "+root+" without", 1)
		code, out := runMain(t, tc.args...)
		if code != 1 || !strings.Contains(out, tc.want) || strings.Contains(out, "step=") {
			t.Errorf("%q: exit %d, output:\n%s\nwant exit 1 and %q before any step", tc.args, code, out, tc.want)
		}
		if _, err := os.Stat(filepath.Join(root, "etc/hostname")); err == nil {
			t.Errorf("%q: wrote %s/etc/hostname", tc.args, root)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Errorf("%q: the hook ran", tc.args)
		}
	}
}

// TestBlessOffNode: imgctl-node bless on a machine that did not boot an A/B disk (this test
// host: no imgctl.root= device on its command line) says so and exits 0, touching nothing.
func TestBlessOffNode(t *testing.T) {
	line, err := os.ReadFile("/proc/cmdline")
	if err != nil || strings.Contains(string(line), "imgctl.root=") {
		t.Fatalf("this test must run off a node; the host's command line names an imgctl root: %q, %v", line, err)
	}
	code, out := runMain(t, "bless")
	if code != 0 || !strings.Contains(out, "step=update-bless status=skip") || !strings.Contains(out, "not an A/B disk node") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if code, out := runMain(t, "bless", "extra"); code != 2 || !strings.Contains(out, `unexpected argument "extra"`) {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// TestPodNetArgs: imgctl-node podnet refuses a --cluster-cidr that is not a network prefix
// before it talks to anything.
func TestPodNetArgs(t *testing.T) {
	for _, bad := range []string{"10.244.1.1/16", "10.244.0.0", "-x"} {
		code, out := runMain(t, "podnet", "--node", "n1", "--cluster-cidr", bad, "--kubeconfig", "/nonexistent")
		if want := `imgctl-node podnet: --cluster-cidr "` + bad + `": expected a network prefix such as 10.244.0.0/16`; code != 1 || !strings.Contains(out, want) || strings.Contains(out, "step=") {
			t.Errorf("--cluster-cidr %s: exit %d, output:\n%s\nwant exit 1 and %s", bad, code, out, want)
		}
	}
}
