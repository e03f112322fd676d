package test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

var imgctlBin string

// e2eDirPattern names TestMain's directory for the binaries the tests run.
const e2eDirPattern = "imgctl-e2e-"

// diesWithTestHelperEnv makes this binary TestChildDiesWithTest's helper, which dies without
// cleanups.
const diesWithTestHelperEnv = "IMGCTL_DIES_WITH_TEST_HELPER"

func TestMain(m *testing.M) {
	if addr := os.Getenv(relayEnv); addr != "" {
		os.Exit(bootenv.Relay(addr)) // qemu's guestfwd runs this binary as a relay
	}
	if os.Getenv(diesWithTestHelperEnv) == "1" {
		os.Exit(m.Run()) // it runs no imgctl, and dies without cleanups
	}
	dir, err := os.MkdirTemp("", e2eDirPattern)
	if err != nil {
		panic(err)
	}
	imgctlBin = filepath.Join(dir, "imgctl")
	if out, err := exec.Command("go", "build", "-o", imgctlBin, "../cmd/imgctl").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building imgctl: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	awsfake.StopMoto()
	os.RemoveAll(dir)
	os.Exit(code)
}

// imgctl runs the built binary with its own store and cache under dir.
func imgctl(ctx context.Context, t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, imgctlBin, append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache")}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1764115200")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("imgctl %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

type built struct {
	Digest string
	Config struct {
		Kernel string
		Rootfs struct{ Digest string }
		Layers []struct{ Role, Digest string }
	}
}

// imgctlBuild runs imgctl -o json build with args in dir and returns what it printed.
func imgctlBuild(ctx context.Context, t *testing.T, dir string, args ...string) built {
	t.Helper()
	stdout, err := imgctl(ctx, t, dir, append([]string{"-o", "json", "build"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var b built
	if err := json.Unmarshal([]byte(stdout), &b); err != nil || b.Digest == "" {
		t.Fatalf("imgctl -o json build: %v: %q", err, stdout)
	}
	return b
}

// TestDebianNodeImageReproducible builds the embedded default node image (Debian base by
// mmdebstrap, cloud kernel, systemd-boot, containerd, runc from deb.debian.org; a local file as
// kubelet) as rootfs and raw disk twice from fresh caches with one lock, and checks the two
// images (and so their disk.raw) are identical; then builds it a third time as an unprivileged
// user, offline from the first build's cache, and gets the same image again.
func TestDebianNodeImageReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: needs mmdebstrap and deb.debian.org")
	}
	testenv.Tools(t, "mmdebstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	work := t.TempDir()
	kubelet := filepath.Join(work, "kubelet")
	os.WriteFile(kubelet, []byte("#!/bin/sh\necho kubelet stand-in\n"), 0o755)
	lockPath := filepath.Join(work, "imgctl.lock")
	var results []built
	var firstDir string
	for i := 0; i < 2; i++ {
		dir := t.TempDir()
		if i == 0 {
			firstDir = dir
		}
		out, err := imgctl(ctx, t, dir, "-o", "json", "build", "--k8s", "1.21.13", "--lock", lockPath,
			"--target", "rootfs", "--target", "raw,pxe", "--node-agent", nodeAgent(t), "--output", filepath.Join(dir, "out"),
			"--source", "kubelet=file://"+kubelet+"#path=/usr/bin/kubelet&mode=0755")
		if err != nil {
			t.Fatal(err)
		}
		var b built
		if err := json.Unmarshal([]byte(out), &b); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		results = append(results, b)
		if i == 0 {
			checkNodeRootfs(t, dir, b)
			checkPxeRootIsRootA(t, filepath.Join(dir, "out"))
		}
		// Keep the disk small (CI's ran out once): of the first build only its cache is needed
		// again, of the second nothing but its result.
		for _, p := range []string{filepath.Join(dir, "store"), filepath.Join(dir, "out")} {
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
		}
		if i == 1 {
			if err := os.RemoveAll(filepath.Join(dir, "cache")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The image digest covers every artifact: rootfs.tar, disk.raw, vmlinuz, initrd.img,
	// rootfs.squashfs, boot.ipxe.
	if results[0].Digest != results[1].Digest || results[0].Config.Rootfs.Digest != results[1].Config.Rootfs.Digest {
		t.Fatalf("builds from fresh caches differ:\n%+v\n%+v", results[0], results[1])
	}
	t.Logf("image %s, rootfs %s, kernel %s", results[0].Digest, results[0].Config.Rootfs.Digest, results[0].Config.Kernel)

	// Unprivileged: no root, no loop devices, no mounts are needed to build.
	if os.Geteuid() != 0 {
		return
	}
	testenv.Tools(t, "setpriv")
	dir := t.TempDir()
	// t.TempDir's parents are private to root: let nobody traverse them.
	for _, p := range []string{dir, work} {
		os.Chmod(filepath.Dir(p), 0o755)
	}
	// The first build's cache, moved (not copied: a copy took 2.5 GB more of the disk) as a
	// cache carried to another machine would be, and owned by another user.
	if err := os.Rename(filepath.Join(firstDir, "cache"), filepath.Join(dir, "cache")); err != nil {
		t.Fatalf("moving the cache: %v", err)
	}
	for _, p := range []string{dir, work} {
		if out, err := exec.Command("chown", "-R", "nobody:nogroup", p).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v %s", err, out)
		}
	}
	os.Chmod(filepath.Dir(imgctlBin), 0o755)
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
		imgctlBin, "--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache"), "--offline",
		"-o", "json", "build", "--k8s", "1.21.13", "--lock", lockPath, "--locked",
		"--target", "rootfs", "--target", "raw,pxe", "--node-agent", nodeAgent(t),
		"--source", "kubelet=file://"+kubelet+"#path=/usr/bin/kubelet&mode=0755")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1764115200", "HOME="+dir)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("unprivileged build: %v\n%s", err, stderr)
	}
	var b built
	if err := json.Unmarshal(out, &b); err != nil || b.Digest != results[0].Digest {
		t.Fatalf("unprivileged build gave %s (%v), want %s", b.Digest, err, results[0].Digest)
	}
}

// checkPxeRootIsRootA checks that one build of raw and pxe compressed the root once: pxe's
// rootfs.squashfs is byte for byte what raw's ROOT-A holds.
func checkPxeRootIsRootA(t *testing.T, out string) {
	t.Helper()
	sq, err := os.ReadFile(filepath.Join(out, "rootfs.squashfs"))
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(out, "disk.raw")
	part := partInfo(t, disk, 2)
	if part.name != "ROOT-A" {
		t.Fatalf("partition 2 is %q, want ROOT-A", part.name)
	}
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rootA := make([]byte, len(sq))
	if _, err := f.ReadAt(rootA, part.first*512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rootA, sq) {
		t.Errorf("pxe's rootfs.squashfs (%d bytes) differs from raw's ROOT-A content", len(sq))
	}
	ipxe, err := os.ReadFile(filepath.Join(out, "boot.ipxe"))
	if err != nil || !bytes.HasPrefix(ipxe, []byte("#!ipxe\n")) {
		t.Errorf("boot.ipxe: %v\n%s", err, ipxe)
	}
}

func checkNodeRootfs(t *testing.T, dir string, b built) {
	t.Helper()
	d := strings.TrimPrefix(b.Config.Rootfs.Digest, "sha256:")
	f, err := os.Open(filepath.Join(dir, "store", "blobs", "sha256", d))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = h
	}
	rel := b.Config.Kernel
	if rel == "" {
		t.Fatal("the image config records no kernel release")
	}
	for _, want := range []string{
		"usr/lib/modules/" + rel + "/modules.dep.bin", "usr/lib/modules/" + rel + "/modules.alias.bin",
		"boot/vmlinuz-" + rel, "usr/bin/containerd", "usr/sbin/runc", "usr/bin/kubelet",
		"usr/lib/systemd/boot/efi/systemd-bootx64.efi", "usr/lib/systemd/systemd", "usr/bin/dbus-daemon",
	} {
		if entries[want] == nil {
			t.Errorf("rootfs lacks %s", want)
		}
	}
	for link, target := range map[string]string{"bin": "usr/bin", "lib": "usr/lib", "sbin": "usr/sbin"} {
		if h := entries[link]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != target {
			t.Errorf("%s should stay a symlink to %s (merged /usr): %+v", link, target, h)
		}
	}
	if h := entries["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp/ lost its mode: %+v", h)
	}
}

// TestInterruptedBuildsLeaveNothingHalfWritten interrupts builds of a 192 MiB layer in two
// phases (while the cache writes the fetched layer, while the store ingests the rootfs) with
// SIGKILL and SIGINT. It waits until the phase's temporary file exists before it signals and
// proves the signal ended the build (a build that finished first fails the test), then checks
// that the store verifies clean and holds no partial image, that SIGINT removed its temporary
// files, and that the next build succeeds.
func TestInterruptedBuildsLeaveNothingHalfWritten(t *testing.T) {
	testenv.Integration(t, "builds a 192 MiB layer four times")
	ctx := context.Background()
	dir := t.TempDir()
	big := filepath.Join(dir, "big.tar")
	writeBigTar(t, big, 24, 8<<20) // 192 MiB: each phase takes seconds, long enough to interrupt
	spec := filepath.Join(dir, "node.yaml")
	os.WriteFile(spec, []byte(`apiVersion: imgctl/v1alpha1
kind: NodeImage
metadata: {name: interrupted}
spec:
  kubernetes: {version: 1.21.13}
  layers:
    - role: extra
      sources: ["file://`+big+`"]
`), 0o644)
	cacheTmp := filepath.Join(dir, "cache", "tmp")
	storeIngest := filepath.Join(dir, "store", "ingest")
	for _, tc := range []struct {
		phase string // the directory whose temporary file marks the phase
		sig   syscall.Signal
		fresh bool // start from an empty cache, so the fetch runs again
	}{
		{cacheTmp, syscall.SIGKILL, true},
		{cacheTmp, syscall.SIGINT, true},
		{storeIngest, syscall.SIGKILL, false},
		{storeIngest, syscall.SIGINT, false},
	} {
		name := fmt.Sprintf("%v in %s", tc.sig, filepath.Base(filepath.Dir(tc.phase))+"/"+filepath.Base(tc.phase))
		if tc.fresh {
			os.RemoveAll(filepath.Join(dir, "cache"))
		}
		cmd := exec.Command(imgctlBin, "--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache"), "build", "-f", spec, "--lock", filepath.Join(dir, "imgctl.lock"))
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1764115200")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		before := tempFiles(t, tc.phase) // a killed build's leftovers do not mark the phase
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		tmp, err := waitForTempFile(tc.phase, before, waited, 2*time.Minute)
		if err != nil {
			_ = cmd.Process.Kill()
			t.Fatalf("%s: %v\n%s", name, err, stderr.String())
		}
		if err := cmd.Process.Signal(tc.sig); err != nil {
			t.Fatalf("%s: signalling the build: %v", name, err)
		}
		err = <-waited
		t.Logf("%s (temporary file %s): %v", name, tmp, err)
		// The signal must be what ended the build: not a success, not another failure.
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s: the build finished before the signal (%v): nothing was interrupted\n%s", name, err, stderr.String())
		}
		ws := ee.Sys().(syscall.WaitStatus)
		switch tc.sig {
		case syscall.SIGKILL:
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("%s: build ended with %v, not killed by the signal\n%s", name, err, stderr.String())
			}
		case syscall.SIGINT:
			if ee.ExitCode() != 130 {
				t.Fatalf("%s: exit code %d, want 130 (interrupted)\n%s", name, ee.ExitCode(), stderr.String())
			}
			if left := tempFiles(t, cacheTmp, storeIngest); len(left) > len(before) {
				t.Errorf("%s: an interrupted build left temporary files: %v", name, left)
			}
		}
		if out, err := imgctl(ctx, t, dir, "store", "verify"); err != nil {
			t.Fatalf("%s: store verify: %v\n%s", name, err, out)
		}
		list, err := imgctl(ctx, t, dir, "-o", "json", "images", "list")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(list, "interrupted") {
			t.Fatalf("%s: an interrupted build left an image in the store: %s", name, list)
		}
	}
	if _, err := imgctl(ctx, t, dir, "build", "-f", spec, "--lock", filepath.Join(dir, "imgctl.lock")); err != nil {
		t.Fatalf("build after interruptions: %v", err)
	}
	if _, err := imgctl(ctx, t, dir, "store", "verify"); err != nil {
		t.Fatal(err)
	}
}

// waitForTempFile polls dir until a temporary blob file (blob-*) not in old appears in it and
// returns its name. It fails if the process ends first (done receives its exit) or after limit.
func waitForTempFile(dir string, old []string, done <-chan error, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return "", fmt.Errorf("the build ended (%v) before a temporary file appeared in %s: nothing to interrupt", err, dir)
		case <-time.After(5 * time.Millisecond):
		}
		m, _ := filepath.Glob(filepath.Join(dir, "blob-*"))
		for _, p := range m {
			if !slices.Contains(old, p) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no temporary file appeared in %s within %v", dir, limit)
}

// tempFiles lists the temporary blob files left in dirs.
func tempFiles(t *testing.T, dirs ...string) []string {
	t.Helper()
	var left []string
	for _, d := range dirs {
		m, err := filepath.Glob(filepath.Join(d, "blob-*"))
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, m...)
	}
	return left
}

func writeBigTar(t *testing.T, path string, files, size int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	chunk := bytes.Repeat([]byte("imgctl"), 1<<16)
	for i := 0; i < files; i++ {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/file%02d", i), Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(size)})
		for n := 0; n < size; n += len(chunk) {
			tw.Write(chunk[:min(len(chunk), size-n)])
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDiskFullLeavesNothingVisible builds into a store on a tiny tmpfs (root only: it mounts
// one) and checks the build fails naming the cause, with no image and no stray blob left.
func TestDiskFullLeavesNothingVisible(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	testenv.Root(t, "mounts a small tmpfs")
	ctx := context.Background()
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	os.MkdirAll(full, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", full).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", full).Run() })
	big := filepath.Join(dir, "big.tar")
	writeBigTar(t, big, 2, 4<<20)
	spec := filepath.Join(dir, "node.yaml")
	os.WriteFile(spec, []byte(`apiVersion: imgctl/v1alpha1
kind: NodeImage
metadata: {name: full}
spec:
  kubernetes: {version: 1.21.13}
  layers:
    - role: extra
      sources: ["file://`+big+`"]
`), 0o644)
	args := []string{"--store", filepath.Join(full, "store"), "--cache", filepath.Join(dir, "cache"), "build", "-f", spec, "--lock", filepath.Join(dir, "imgctl.lock")}
	out, err := exec.CommandContext(ctx, imgctlBin, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no space left on device") {
		t.Fatalf("build on a full disk: err = %v, output:\n%s", err, out)
	}
	var leftovers []string
	filepath.Walk(filepath.Join(full, "store"), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && info.Size() > 4096 {
			leftovers = append(leftovers, p)
		}
		return nil
	})
	if len(leftovers) > 0 {
		t.Errorf("a failed build left large files in the store: %v", leftovers)
	}
	if _, err := os.Stat(filepath.Join(dir, "imgctl.lock")); err == nil {
		t.Error("a failed build wrote the lock")
	}
}
