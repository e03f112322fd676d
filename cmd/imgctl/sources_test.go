package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestImgctlProcess is imgctl itself when IMGCTL_TEST_MAIN=1, with the arguments after "--":
// the tests below run the test binary as the real command (main, its signal handling and exit
// status included).
func TestImgctlProcess(t *testing.T) {
	if os.Getenv("IMGCTL_TEST_MAIN") != "1" {
		return // not a child: nothing to do
	}
	i := slices.Index(os.Args, "--")
	if i < 0 {
		t.Fatal("no -- before the imgctl arguments")
	}
	os.Args = append([]string{"imgctl"}, os.Args[i+1:]...)
	main()
	os.Exit(0)
}

// imgctl starts the command with its own store and cache; wait for its result.
func imgctl(t *testing.T, ctx context.Context, dir string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	all := append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache")}, args...)
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestImgctlProcess$", "--"}, all...)...)
	cmd.Env = append(os.Environ(), "IMGCTL_TEST_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &stderr
}

// exitCode waits for cmd and returns its exit status.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// fakeMmdebstrap puts layers/source's stand-in for mmdebstrap first on PATH: it records its
// argv and, like mmdebstrap, runs a --setup-hook=CMD option wherever it appears before "--".
func fakeMmdebstrap(t *testing.T) (argv string) {
	t.Helper()
	bin := t.TempDir()
	script, err := os.ReadFile("../../layers/source/testdata/mmdebstrap")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "mmdebstrap"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTar(t, filepath.Join(bin, "base.tar"), "etc/")
	argv = filepath.Join(bin, "argv")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FAKE_MMDEBSTRAP_ARGV", argv)
	t.Setenv("FAKE_MMDEBSTRAP_TAR", filepath.Join(bin, "base.tar"))
	return argv
}

// The reported injection, as typed: a clear error naming the mirror, exit 1, no hook run.
func TestInspectRefusesMmdebstrapInjection(t *testing.T) {
	dir := t.TempDir()
	argv := fakeMmdebstrap(t)
	marker := filepath.Join(dir, "PWNED")
	raw := "mmdebstrap://bookworm?mirror=--setup-hook=touch%20" + marker
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, stderr := imgctl(t, ctx, dir, "layers", "inspect", raw)
	if code := exitCode(t, cmd); code != 1 {
		t.Errorf("exit status %d, want 1; stderr:\n%s", code, stderr)
	}
	want := `imgctl: source "` + raw + `": mirror "--setup-hook=touch ` + marker + `": expected an http://, https:// or file:/// URL of a Debian mirror`
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the hook ran: %s exists (%v)", marker, err)
	}
	if _, err := os.Stat(argv); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mmdebstrap ran (%v)", err)
	}
}

// Sources that never end are refused at once, by type: a FIFO (open would wait for a writer)
// and /dev/zero (reads forever), named directly, through a symlink, or as a single file.
func TestInspectRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "x.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.tar")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ uri, want string }{
		{"file://" + fifo, fifo + ": a named pipe (FIFO), expected a regular file"},
		{"file:///dev/zero", "cannot tell what zero is"},
		{"file:///dev/zero#path=/usr/bin/zero", "/dev/zero: a character device, expected a regular file"},
		{"file://" + zero, zero + ": a character device, expected a regular file"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		cmd, stderr := imgctl(t, ctx, dir, "layers", "inspect", tc.uri)
		code := exitCode(t, cmd)
		took := time.Since(start)
		cancel()
		if code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("layers inspect %s: exit %d after %s, stderr:\n%s\nwant exit 1 and %q", tc.uri, code, took.Round(time.Millisecond), stderr, tc.want)
		}
	}
}

// SIGINT while a blocking step runs (mmdebstrap, whose child holds its output open) ends
// imgctl promptly with status 130, and the child with it.
func TestInterruptEndsBlockingStep(t *testing.T) {
	dir := t.TempDir()
	argv := fakeMmdebstrap(t)
	t.Setenv("FAKE_MMDEBSTRAP_SLEEP", "60")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, stderr := imgctl(t, ctx, dir, "layers", "inspect", "mmdebstrap://bookworm?mirror=http://127.0.0.1:9/debian")
	var child int
	for range 1000 {
		if b, err := os.ReadFile(argv + ".child"); err == nil && strings.HasSuffix(string(b), "\n") {
			var err error
			if child, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
				t.Fatal(err)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatalf("mmdebstrap did not start; stderr:\n%s", stderr)
	}
	start := time.Now()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	code := exitCode(t, cmd)
	if took := time.Since(start); code != 130 || took > 5*time.Second {
		t.Errorf("after SIGINT: exit %d after %s, want 130 within 5s; stderr:\n%s", code, took.Round(time.Millisecond), stderr)
	}
	if !strings.Contains(stderr.String(), "imgctl: interrupted") {
		t.Errorf("stderr:\n%s\nwant imgctl: interrupted", stderr)
	}
	// The child is gone (or a zombie nobody reaped yet) within 2s.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		if _, rest, _ := strings.Cut(string(b), ") "); err != nil || strings.HasPrefix(rest, "Z") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("mmdebstrap's child %d outlived imgctl", child)
			syscall.Kill(child, syscall.SIGKILL)
			break
		}
	}
}

// The files a user names on the command line (spec, lock, keys, keyring, node agent) are read
// like sources: a FIFO or a device is refused at once instead of blocking or reading forever.
func TestCommandLineFilesRefuseSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	layer := t.TempDir()
	spec := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(spec, []byte("apiVersion: imgctl/v1alpha1\nkind: NodeImage\nmetadata: {name: x}\nspec:\n  kubernetes: {version: 1.21.13}\n  layers:\n    - role: extra\n      sources: [\"file://"+layer+"/\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"build", "-f", fifo}, fifo + ": a named pipe (FIFO), expected a regular file"},
		{[]string{"build", "-f", "/dev/zero"}, "/dev/zero: a character device, expected a regular file"},
		{[]string{"build", "-f", spec, "--lock", fifo}, fifo + ": a named pipe (FIFO), expected a regular file"},
		{[]string{"trust", "add", fifo}, fifo + ": a named pipe (FIFO), expected a regular file"},
		{[]string{"build", "-f", spec, "--lock", filepath.Join(dir, "x.lock"), "--sign-key", fifo}, fifo + ": a named pipe (FIFO), expected a regular file"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		cmd, stderr := imgctl(t, ctx, dir, tc.args...)
		code := exitCode(t, cmd)
		took := time.Since(start)
		cancel()
		if code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("imgctl %s: exit %d after %s, stderr:\n%s\nwant exit 1 and %q", strings.Join(tc.args, " "), code, took.Round(time.Millisecond), stderr, tc.want)
		}
	}
}
