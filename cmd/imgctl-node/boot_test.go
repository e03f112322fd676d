package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// The boot test builds an initrd around the agent and a GPT disk with a tiny squashfs root,
// boots them in qemu (TCG) and reads the serial console.
//
// Environment:
//
//	IMGCTL_TEST_KERNEL_DEB  a linux-image-*-cloud-amd64 .deb to use instead of apt-get download
//	IMGCTL_TEST_KERNEL_PKG  the package to download (default linux-image-6.1.0-50-cloud-amd64)
const (
	defaultKernelPkg = "linux-image-6.1.0-50-cloud-amd64"
	// bootWatchdog bounds one boot. A boot takes 20–40 s under TCG, but with the machine's two
	// cores busy (other packages' qemu guests run at the same time in make test) the guest
	// starved for over 100 s once (a soft lockup in the kernel's crypto self-tests) and 120 s
	// killed a boot that was only slow.
	bootWatchdog = 5 * time.Minute
	// debugHold is how long qemu must keep running after the init said it would not reboot.
	debugHold     = 10 * time.Second
	diskSize      = 64 << 20
	grownDiskSize = 96 << 20
)

// initrdModules are the modules the initrd needs to find and mount root in qemu.
var initrdModules = []string{"virtio_pci", "virtio_blk", "squashfs", "overlay", "dm-mod", "dm-verity"}

func TestBootQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots qemu: skipped under -short")
	}
	testenv.Tools(t, "qemu-system-x86_64", "sgdisk", "mksquashfs", "depmod", "modprobe", "dpkg-deb", "mke2fs", "ldd", "e2fsck")
	ctx := context.Background()
	dir := t.TempDir()
	k := kernel(ctx, t, dir)
	initrd := buildInitrd(ctx, t, dir, k)
	disk := buildDisk(ctx, t, dir)

	base := "console=ttyS0 panic=-1 imgctl.root=PARTLABEL=ROOT-A imgctl.state=PARTLABEL=STATE"

	t.Run("first boot", func(t *testing.T) {
		out := boot(ctx, t, k.vmlinuz, initrd, disk, base)
		for _, step := range []string{"mount-proc", "mount-sys", "mount-dev", "mount-run", "cmdline", "modules", "find-root", "mount-root", "mount-overlay", "find-state", "grow-state", "format-state", "mount-state", "container-store", "switch-root"} {
			requireStep(t, out, step, "ok")
		}
		requireLine(t, out, "step=mount-root status=ok", "device=/dev/vda2", "label=ROOT-A", "fstype=squashfs")
		requireLine(t, out, "step=modules status=ok", fmt.Sprintf("count=%d", len(k.modules)), "failed=0")
		requireLine(t, out, "step=grow-state status=ok", "grown=true", "moved-backup-gpt=true")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "uid=0", "pid=1", "root-ro=true", "var-writable=true",
			"var-overlay=true", "state=ext4", "var-persisted=false", "boot=1", "root=overlay")
		// containerd's store is not an overlay (an overlay cannot be another's upper layer:
		// its overlayfs snapshotter would not load) but a directory of STATE.
		requireLine(t, out, "step=container-store status=ok", "dir=/var/lib/containerd", "on=state")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "store=ext4", "store-overlay=ok")
		// The STATE partition now ends 34 sectors before the end of the enlarged disk, and the
		// table and the filesystem are clean.
		v, err := exec.CommandContext(ctx, "sgdisk", "-v", disk).CombinedOutput()
		if err != nil || !strings.Contains(string(v), "No problems found") {
			t.Errorf("sgdisk -v: %v\n%s", err, v)
		}
		first, last := partition(ctx, t, disk, 3)
		if want := int64(grownDiskSize/512 - 34); last != want {
			t.Errorf("STATE ends at sector %d, want %d", last, want)
		}
		part := filepath.Join(dir, "state.img")
		extract(t, disk, part, first*512, (last-first+1)*512)
		// The guest powers off with STATE still mounted, so its last metadata may sit only in
		// the journal (sync commits it, nothing checkpoints it). Replay the journal on the copy
		// as the next mount would, then check strictly: a plain -n check skips the replay and
		// fails whenever the kernel had not checkpointed yet (a CI flake, stop 17).
		if out, err := exec.CommandContext(ctx, "e2fsck", "-E", "journal_only", "-p", part).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -E journal_only STATE: %v\n%s", err, out)
		}
		if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", part).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn STATE: %v\n%s", err, out)
		}
		if out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", part).CombinedOutput(); err == nil {
			if !regexp.MustCompile(`Filesystem volume name:\s+STATE`).Match(out) {
				t.Errorf("STATE label missing:\n%s", out)
			}
		}
	})

	t.Run("second boot keeps /var", func(t *testing.T) {
		out := boot(ctx, t, k.vmlinuz, initrd, disk, base)
		requireStep(t, out, "grow-state", "skip")
		requireStep(t, out, "format-state", "skip")
		requireStep(t, out, "mount-state", "ok")
		requireStep(t, out, "switch-root", "ok")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "root-ro=true", "var-writable=true", "var-persisted=true", "boot=2")
	})

	t.Run("root by PARTUUID", func(t *testing.T) {
		// Linux 6.1's uevents carry no PARTUUID: the agent reads the GPT itself.
		info := run(ctx, t, "", "sgdisk", "-i", "2", disk)
		m := regexp.MustCompile(`Partition unique GUID: ([0-9A-Fa-f-]{36})`).FindStringSubmatch(info)
		if m == nil {
			t.Fatalf("sgdisk -i 2:\n%s", info)
		}
		out := boot(ctx, t, k.vmlinuz, initrd, disk, "console=ttyS0 panic=-1 imgctl.root=PARTUUID="+m[1])
		requireLine(t, out, "step=find-root status=ok", "device=/dev/vda2", "PARTUUID="+strings.ToLower(m[1]))
		requireStep(t, out, "switch-root", "ok")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "root-ro=true", "var-overlay=false", "root=overlay")
		// Without STATE, containerd's store is a tmpfs (the root overlay cannot hold its snapshots).
		requireLine(t, out, "step=container-store status=ok", "on=tmpfs")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "store=tmpfs", "store-overlay=ok")
	})

	t.Run("missing root reboots", func(t *testing.T) {
		start := time.Now()
		out := boot(ctx, t, k.vmlinuz, initrd, disk, "console=ttyS0 panic=-1 imgctl.root=PARTLABEL=NOPE imgctl.root-timeout=3s")
		requireLine(t, out, "step=find-root status=fail", "PARTLABEL=NOPE", `err="find-root: device not found`)
		requireLine(t, out, "imgctl-node: rebooting")
		if strings.Contains(out, "IMGCTL-TEST-INIT-REACHED") || strings.Contains(out, "step=switch-root") {
			t.Errorf("booted without a root:\n%s", out)
		}
		t.Logf("failure to qemu exit: %s", time.Since(start).Round(100*time.Millisecond))
	})

	t.Run("debug does not reboot", func(t *testing.T) {
		// qemu must still run debugHold after the line (it would exit at once on a reboot:
		// -no-reboot); a fixed 12 s watchdog from power-on was too short for a loaded machine.
		out := bootWatch(ctx, t, k.vmlinuz, initrd, disk, "console=ttyS0 panic=-1 imgctl.debug imgctl.root=PARTLABEL=NOPE imgctl.root-timeout=1s", "imgctl.debug is set: not rebooting")
		requireLine(t, out, "step=find-root status=fail", "PARTLABEL=NOPE")
		requireLine(t, out, "imgctl.debug is set: not rebooting")
		if strings.Contains(out, "imgctl-node: rebooting") {
			t.Errorf("rebooted with imgctl.debug:\n%s", out)
		}
	})
}

type kernelTree struct {
	dir, release, vmlinuz string
	modules               []string // load order, relative to dir
}

// kernel extracts the Debian cloud kernel .deb and resolves the initrd's module closure with
// depmod/modprobe against the extracted tree.
func kernel(ctx context.Context, t *testing.T, dir string) kernelTree {
	t.Helper()
	deb := os.Getenv("IMGCTL_TEST_KERNEL_DEB")
	if deb == "" {
		pkg := os.Getenv("IMGCTL_TEST_KERNEL_PKG")
		if pkg == "" {
			pkg = defaultKernelPkg
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		cache = filepath.Join(cache, "imgctl-test", "kernels")
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		matches, _ := filepath.Glob(filepath.Join(cache, pkg+"_*.deb"))
		if len(matches) == 0 {
			cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
			cmd.Dir = cache
			if out, err := cmd.CombinedOutput(); err != nil {
				testenv.Missing(t, "apt-get download %s (the pinned test kernel; set IMGCTL_TEST_KERNEL_PKG to another): %v\n%s", pkg, err, out)
			}
			matches, _ = filepath.Glob(filepath.Join(cache, pkg+"_*.deb"))
		}
		if len(matches) == 0 {
			testenv.Missing(t, "no %s .deb in %s", pkg, cache)
		}
		deb = matches[len(matches)-1]
	}
	root := filepath.Join(dir, "kernel")
	run(ctx, t, "", "dpkg-deb", "-x", deb, root)
	vmlinuz, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	rels, _ := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if len(vmlinuz) != 1 || len(rels) != 1 {
		t.Fatalf("%s: want one vmlinuz and one module tree, got %v %v", deb, vmlinuz, rels)
	}
	k := kernelTree{dir: root, release: rels[0].Name(), vmlinuz: vmlinuz[0]}
	run(ctx, t, "", "depmod", "-b", root, k.release)
	seen := map[string]bool{}
	for _, m := range initrdModules {
		out := run(ctx, t, "", "modprobe", "-d", root, "-S", k.release, "--show-depends", m)
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin X"
			}
			rel, err := filepath.Rel(root, f[1])
			if err != nil || strings.HasPrefix(rel, "..") {
				t.Fatalf("modprobe gave %q outside %s", f[1], root)
			}
			if !seen[rel] {
				seen[rel] = true
				k.modules = append(k.modules, rel)
			}
		}
	}
	t.Logf("kernel %s, initrd modules: %v", k.release, k.modules)
	return k
}

// buildInitrd writes the initrd layout the agent expects: /init, /dev/console,
// /etc/imgctl/modules and the modules themselves at their /lib/modules paths.
func buildInitrd(ctx context.Context, t *testing.T, dir string, k kernelTree) string {
	t.Helper()
	agent := filepath.Join(dir, "imgctl-node")
	goBuild(ctx, t, agent, ".")
	var buf bytes.Buffer
	c := &newcWriter{w: &buf}
	dirs := map[string]bool{}
	mkdirs := func(p string) {
		var parts []string
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			if !dirs[parts[i]] {
				dirs[parts[i]] = true
				c.dir(parts[i])
			}
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "etc", "etc/imgctl"} {
		dirs[d] = true
		c.dir(d)
	}
	c.chr("dev/console", 5, 1)
	c.file("init", 0o755, readFile(t, agent))
	mods := append([]string(nil), k.modules...)
	sort.Strings(mods) // archive order; load order is the list's
	for _, m := range mods {
		mkdirs(m)
		c.file(m, 0o644, readFile(t, filepath.Join(k.dir, m)))
	}
	c.file("etc/imgctl/modules", 0o644, []byte(strings.Join(k.modules, "\n")+"\n"))
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("initrd: %d KiB", buf.Len()>>10)
	return p
}

// buildDisk makes a 64 MiB GPT disk (ESP, ROOT-A squashfs, blank 8 MiB STATE) and then
// enlarges the file to 96 MiB, as a cloud volume bigger than the image would be.
func buildDisk(ctx context.Context, t *testing.T, dir string) string {
	t.Helper()
	return buildDiskWith(ctx, t, dir, nil)
}

// buildDiskWith is buildDisk with the squashfs passed through rootImage (nil: as is) before
// it is written to ROOT-A.
func buildDiskWith(ctx context.Context, t *testing.T, dir string, rootImage func(sqfs string) string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"sbin", "dev", "proc", "sys", "run", "tmp", "var/lib", "etc"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	goBuild(ctx, t, filepath.Join(tree, "sbin", "init"), "./testdata/testinit")
	copyWithLibs(ctx, t, tree, "/sbin/mke2fs", "/sbin/mkfs.ext4")
	sqfs := filepath.Join(dir, "root.sqfs")
	run(ctx, t, "", "mksquashfs", tree, sqfs, "-noappend", "-all-root", "-comp", "xz", "-quiet")
	if rootImage != nil {
		sqfs = rootImage(sqfs)
	}

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}
	run(ctx, t, "", "sgdisk", "-o",
		"-n", "1:0:+4M", "-t", "1:ef00", "-c", "1:ESP",
		"-n", "2:0:+24M", "-t", "2:8304", "-c", "2:ROOT-A",
		"-n", "3:0:+8M", "-t", "3:8300", "-c", "3:STATE", disk)
	first, last := partition(ctx, t, disk, 2)
	img := readFile(t, sqfs)
	if int64(len(img)) > (last-first+1)*512 {
		t.Fatalf("squashfs of %d bytes does not fit ROOT-A", len(img))
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(img, first*512); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, grownDiskSize); err != nil {
		t.Fatal(err)
	}
	t.Logf("root squashfs: %d KiB", len(img)>>10)
	return disk
}

// copyWithLibs copies a dynamically linked host binary into tree at dst with the shared
// libraries ldd lists, at the same paths.
func copyWithLibs(ctx context.Context, t *testing.T, tree, src, dst string) {
	t.Helper()
	copyFile(t, src, filepath.Join(tree, dst), 0o755)
	out := run(ctx, t, "", "ldd", src)
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				copyFile(t, f, filepath.Join(tree, f), 0o755)
			}
		}
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, readFile(t, src), mode); err != nil {
		t.Fatal(err)
	}
}

// boot runs qemu until the guest powers off or reboots (-no-reboot makes both exit), under a
// watchdog that kills it by PID, and returns the serial console.
func boot(ctx context.Context, t *testing.T, vmlinuz, initrd, disk, appendLine string) string {
	t.Helper()
	return bootWatch(ctx, t, vmlinuz, initrd, disk, appendLine, "")
}

// bootWatch is boot with a given watchdog; with expectKill, the watchdog firing is the
// expected outcome (a guest that must not reboot).
func bootWatch(ctx context.Context, t *testing.T, vmlinuz, initrd, disk, appendLine, hold string) string {
	t.Helper()
	console := filepath.Join(t.TempDir(), "console.log")
	wctx, cancel := context.WithTimeout(ctx, bootWatchdog)
	defer cancel()
	// -cpu max gives the guest RDRAND: with qemu64, mkfs.ext4 waits ~4 s for the entropy pool
	// (getrandom at early boot), which clouds do not.
	cmd := exec.CommandContext(wctx, "qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-display", "none", "-monitor", "none", "-serial", "file:"+console,
		"-no-reboot", "-nic", "none",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", appendLine,
		"-drive", "file="+disk+",format=raw,if=virtio")
	held := make(chan struct{}) // closed when we stopped qemu debugHold after the hold line
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	// qemu dies with the test binary (a test timeout panics without cleanups).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	exited := make(chan struct{})
	if hold != "" {
		go func() {
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-exited:
					return
				case <-wctx.Done():
					return
				case <-tick.C:
				}
				if out, _ := os.ReadFile(console); bytes.Contains(out, []byte(hold)) {
					select {
					case <-exited:
					case <-wctx.Done():
					case <-time.After(debugHold):
						close(held)
						_ = cmd.Process.Kill()
					}
					return
				}
			}
		}()
	}
	err := cmd.Wait()
	close(exited)
	elapsed := time.Since(start)
	out, _ := os.ReadFile(console)
	t.Logf("qemu ran %s (watchdog %s)", elapsed.Round(100*time.Millisecond), bootWatchdog)
	select {
	case <-held:
		t.Logf("qemu still ran %s after %q; stopped it", debugHold, hold)
		return string(out)
	default:
	}
	if hold != "" && wctx.Err() == nil {
		// qemu exited by itself: the guest rebooted or powered off (-no-reboot), or crashed.
		t.Fatalf("qemu exited (%v) before %s had passed after %q; console:\n%s", err, debugHold, hold, out)
	}
	killed := errors.Is(wctx.Err(), context.DeadlineExceeded)
	switch {
	case killed && hold != "":
		t.Fatalf("qemu killed by the watchdog after %s before %q appeared; console:\n%s", bootWatchdog, hold, out)
	case killed:
		t.Fatalf("qemu killed by the watchdog after %s; console:\n%s", bootWatchdog, out)
	case err != nil:
		t.Fatalf("qemu: %v\n%s\nconsole:\n%s", err, stderr.Bytes(), out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "imgctl-node") || strings.Contains(line, "IMGCTL-TEST") {
			t.Log(strings.TrimSpace(line))
		}
	}
	return string(out)
}

func requireStep(t *testing.T, out, step, status string) {
	t.Helper()
	requireLine(t, out, "step="+step+" status="+status)
}

// kernelMessage matches a kernel log line that the console printed into the middle of one of
// ours (the kernel's printk and our write to /dev/console interleave).
var kernelMessage = regexp.MustCompile(`([^\n])\[ *\d+\.\d+\] [^\n]*\n`)

// requireLine fails unless one console line contains all the substrings.
func requireLine(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, line := range strings.Split(kernelMessage.ReplaceAllString(out, "$1"), "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
	}
	t.Errorf("no console line contains all of %q; console:\n%s", subs, out)
}

func partition(ctx context.Context, t *testing.T, disk string, n int) (first, last int64) {
	t.Helper()
	out := run(ctx, t, "", "sgdisk", "-i", strconv.Itoa(n), disk)
	m1 := regexp.MustCompile(`First sector: (\d+)`).FindStringSubmatch(out)
	m2 := regexp.MustCompile(`Last sector: (\d+)`).FindStringSubmatch(out)
	if m1 == nil || m2 == nil {
		t.Fatalf("sgdisk -i %d:\n%s", n, out)
	}
	first, _ = strconv.ParseInt(m1[1], 10, 64)
	last, _ = strconv.ParseInt(m2[1], 10, 64)
	return first, last
}

func extract(t *testing.T, disk, dst string, off, n int64) {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func goBuild(ctx context.Context, t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func run(ctx context.Context, t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
