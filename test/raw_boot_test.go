package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/layers/testenv"
)

// testLayer is an extra layer for boot tests: serial-getty masked (agetty would eat the
// console) and a unit that reports how the root was mounted once multi-user.target is
// reached, then powers the guest off.
func testLayer(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "testlayer")
	files := map[string]string{
		"etc/systemd/system/imgctl-test-report.service": reportUnit("imgctl boot test report", "multi-user.target"),
		"usr/local/bin/imgctl-test-report": `#!/bin/sh
lower=$(findmnt -no SOURCE,FSTYPE,OPTIONS /run/imgctl/lower | tr -s ' ' ',')
# Which partition the root really came from, as the kernel sees it (not what the loader asked);
# through the device-mapper device (dm-verity) the init may have mounted instead.
dev=$(basename "$(readlink -f "$(findmnt -no SOURCE /run/imgctl/lower)")")
dm=none
if [ -e "/sys/class/block/$dev/dm/name" ]; then
	dm="$(cat "/sys/class/block/$dev/dm/name"):$dev"
	dev=$(ls "/sys/class/block/$dev/slaves" | head -n 1)
fi
verity=$(test -e /run/imgctl/verity.json && echo marker || echo none)
rootpart="name=$(sed -n 's/^PARTNAME=//p' "/sys/class/block/$dev/uevent"),uuid=$(blkid -s PARTUUID -o value "/dev/$dev")"
var=$(findmnt -no FSTYPE /var)
state=$(findmnt -no SOURCE,FSTYPE /run/imgctl/state | tr -s ' ' ',')
echo "IMGCTL-TEST-REPORT lower=$lower rootpart=$rootpart dm=$dm verity=$verity var=$var state=$state target=$(systemctl is-active multi-user.target) uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
systemctl --no-block poweroff
`,
	}
	writeTestLayer(t, root, files)
	return root
}

// reportUnit is a test image's report unit (etc/systemd/system/imgctl-test-report.service): a
// oneshot that runs /usr/local/bin/imgctl-test-report once the units in after (space separated)
// have started or finished, wanted by multi-user.target.
func reportUnit(description, after string) string {
	return "[Unit]\nDescription=" + description + "\nAfter=" + after + "\n\n[Service]\nType=oneshot\n" +
		"ExecStart=/usr/local/bin/imgctl-test-report\n\n[Install]\nWantedBy=multi-user.target\n"
}

// writeTestLayer writes files (executable under usr/local/bin/) into root, enables
// imgctl-test-report.service for multi-user.target and masks the serial getty (agetty would
// eat the console).
func writeTestLayer(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "usr/local/bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	os.MkdirAll(wants, 0o755)
	os.Symlink("/etc/systemd/system/imgctl-test-report.service", filepath.Join(wants, "imgctl-test-report.service"))
	os.Symlink("/dev/null", filepath.Join(root, "etc/systemd/system/serial-getty@ttyS0.service"))
}

type rawBuild struct {
	disk    string
	digest  string
	rootfs  string
	rootLen int64
	// The root blob's dm-verity parameters (its annotations): root hash (hex) and the hash
	// area's offset.
	verityHash   string
	verityOffset int64
}

// buildRaw builds the embedded default spec with the test layer as target raw.
func buildRaw(ctx context.Context, t *testing.T, work, dir string) rawBuild {
	t.Helper()
	testenv.Tools(t, "mmdebstrap")
	kubelet := filepath.Join(work, "kubelet")
	os.WriteFile(kubelet, []byte("#!/bin/sh\necho kubelet stand-in\n"), 0o755)
	out := filepath.Join(dir, "out")
	res, err := imgctl(ctx, t, dir, "-o", "json", "build", "--k8s", "1.21.13", "--target", "raw",
		"--lock", filepath.Join(work, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://"+kubelet+"#path=/usr/bin/kubelet&mode=0755",
		"--source", "extra=file://"+testLayer(t, work)+"/")
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Digest string
		Config struct{ Rootfs struct{ Digest string } }
	}
	if err := json.Unmarshal([]byte(res), &b); err != nil {
		t.Fatalf("%v: %s", err, res)
	}
	info, err := imgctl(ctx, t, dir, "-o", "json", "images", "inspect", b.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var insp struct {
		Manifest struct {
			Layers []struct{ Annotations map[string]string }
		}
	}
	json.Unmarshal([]byte(info), &insp)
	rb := rawBuild{disk: filepath.Join(out, "disk.raw"), digest: b.Digest, rootfs: b.Config.Rootfs.Digest}
	for _, l := range insp.Manifest.Layers {
		if v := l.Annotations[manifest.AnnotationRootSize]; v != "" {
			rb.rootLen, _ = strconv.ParseInt(v, 10, 64)
		}
		if v := l.Annotations[manifest.AnnotationRootVerityRootHash]; v != "" {
			rb.verityHash = v
			rb.verityOffset, _ = strconv.ParseInt(l.Annotations[manifest.AnnotationRootVerityOffset], 10, 64)
		}
	}
	return rb
}

type gptPart struct {
	first, last int64 // sectors
	guid, name  string
}

func partInfo(t *testing.T, disk string, n int) gptPart {
	t.Helper()
	out, err := exec.Command("sgdisk", "-i", strconv.Itoa(n), disk).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -i %d: %v\n%s", n, err, out)
	}
	var p gptPart
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "First sector:"):
			p.first, _ = strconv.ParseInt(strings.Fields(l)[2], 10, 64)
		case strings.HasPrefix(l, "Last sector:"):
			p.last, _ = strconv.ParseInt(strings.Fields(l)[2], 10, 64)
		case strings.HasPrefix(l, "Partition name:"):
			p.name = strings.Trim(strings.TrimSpace(strings.TrimPrefix(l, "Partition name:")), "'")
		case strings.HasPrefix(l, "Partition unique GUID:"):
			p.guid = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(l, "Partition unique GUID:")))
		}
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRawDiskBoots builds the Debian node image as disk.raw (veritysetup accepts ROOT-A's hash
// tree), boots it with OVMF (TCG) on a disk enlarged to 4 GiB and checks systemd reaches
// multi-user with the root mapped through dm-verity and mounted read-only from ROOT-A and
// STATE grown and formatted; then flips a byte in ROOT-A and checks the read fails with an I/O
// error and a verity step line. Slot B and systemd-boot's fallback to it are
// TestNodeUpdatesInPlace's: the node writes slot B itself (imgctl-node update), and an image
// that fails its configuration three times falls back to the other slot.
func TestRawDiskBoots(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "sgdisk", "fsck.fat", "e2fsck", "unsquashfs", "veritysetup")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	work := t.TempDir()
	b := buildRaw(ctx, t, work, t.TempDir())

	// Oracles on the image as built.
	if out := run(t, "sgdisk", "-v", b.disk); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	esp := partInfo(t, b.disk, 1)
	rootA := partInfo(t, b.disk, 2)
	espImg := filepath.Join(work, "esp.img")
	run(t, "dd", "if="+b.disk, "of="+espImg, "bs=512", fmt.Sprintf("skip=%d", esp.first), fmt.Sprintf("count=%d", esp.last-esp.first+1), "status=none")
	if out, err := exec.Command("fsck.fat", "-n", espImg).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n on the ESP: %v\n%s", err, out)
	} else {
		t.Logf("fsck.fat -n: %s", strings.TrimSpace(string(out)))
	}
	sq := filepath.Join(work, "root.squashfs")
	run(t, "dd", "if="+b.disk, "of="+sq, "bs=512", fmt.Sprintf("skip=%d", rootA.first), fmt.Sprintf("count=%d", (b.rootLen+511)/512), "status=none")
	if out := run(t, "unsquashfs", "-s", sq); !strings.Contains(out, "zstd") {
		t.Errorf("unsquashfs -s:\n%s", out)
	}
	// ROOT-A's squashfs carries its dm-verity hash tree: veritysetup accepts it.
	if b.verityHash == "" || b.verityOffset <= 0 {
		t.Fatalf("the root blob has no verity annotations (root hash %q, offset %d)", b.verityHash, b.verityOffset)
	}
	run(t, "veritysetup", "verify", fmt.Sprintf("--hash-offset=%d", b.verityOffset), "--", sq, sq, b.verityHash)

	// Boot 1: slot A, on a disk enlarged to 4 GiB.
	disk := filepath.Join(work, "boot.raw")
	run(t, "cp", "--sparse=always", b.disk, disk)
	if err := os.Truncate(disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(work, "vars.fd")
	copyFile(t, ovmfVars, vars)
	bootCtx, bootCancel := context.WithTimeout(ctx, 8*time.Minute)
	start := time.Now()
	vm := startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, logFile: filepath.Join(work, "boot-a.log")})
	err := vm.waitFor(bootCtx, "IMGCTL-TEST-REPORT")
	bootCancel()
	log := vm.console.String()
	if err != nil {
		t.Fatalf("boot from slot A: %v\nconsole:\n%s", err, tail(log, 6000))
	}
	<-vm.done // the report unit powers the guest off: filesystems are clean
	t.Logf("slot A reached multi-user in %v wall; steps:\n  %s", time.Since(start).Round(time.Second), strings.Join(stepLines(log), "\n  "))
	report := regexp.MustCompile(`IMGCTL-TEST-REPORT [^\r\n]*`).FindString(log)
	t.Log(report)
	for _, want := range []string{"squashfs,ro", "target=active", "var=overlay", "ext4", "dm=imgctl-root:dm-", "verity=marker"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q: %s", want, report)
		}
	}
	// The root is mapped through dm-verity and mounted from the mapped device; the binaries
	// it holds are not hashed again.
	for _, line := range [][]string{
		{"step=verity status=ok", "roothash=" + b.verityHash[:12], fmt.Sprintf("blocks=%d", b.verityOffset/4096)},
		{"step=mount-root status=ok", "device=/dev/dm-"},
		{"step=verify-binaries status=skip", "reason=verity"},
	} {
		if !consoleHasLine(log, line...) {
			t.Errorf("console has no line with all of %q", line)
		}
	}
	for _, step := range []string{"step=mount-root status=ok", "step=switch-root status=ok", "step=format-state status=ok"} {
		if !strings.Contains(log, step) {
			t.Errorf("console lacks %q", step)
		}
	}
	if want := "rootpart=name=ROOT-A,uuid=" + rootA.guid + " "; !strings.Contains(report, want) {
		t.Errorf("slot A: the root was not mounted from ROOT-A: report lacks %q: %s", want, report)
	}
	// STATE now fills the 4 GiB disk and its filesystem is clean.
	if out := run(t, "sgdisk", "-v", disk); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v after the first boot (the init must move the backup GPT to the new end):\n%s", out)
	}
	state := partInfo(t, disk, 4)
	if end := (state.last + 1) * 512; end < 4<<30-2<<20 {
		t.Errorf("STATE ends at %d bytes, want the end of the 4 GiB disk", end)
	}
	stateImg := filepath.Join(work, "state.img")
	run(t, "dd", "if="+disk, "of="+stateImg, "bs=1M", "conv=sparse", "iflag=skip_bytes,count_bytes", fmt.Sprintf("skip=%d", state.first*512), fmt.Sprintf("count=%d", (state.last-state.first+1)*512), "status=none")
	// STATE stays mounted under /var's overlay until the guest powers off, so its journal may
	// still hold the last transactions (as after a power cut): replay it the way the next mount
	// would, then check the whole filesystem.
	if out, err := exec.Command("e2fsck", "-y", "-E", "journal_only", stateImg).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -E journal_only STATE: %v\n%s", err, out)
	} else if strings.Contains(string(out), "recovering journal") {
		t.Logf("STATE's journal was replayed before the check")
	}
	if out, err := exec.Command("e2fsck", "-fn", stateImg).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn STATE: %v\n%s", err, out)
	}

	// Boot 2: one flipped byte in ROOT-A's squashfs superblock (the first block the init reads):
	// dm-verity fails the read, the init's lines say so, and it reboots (qemu -no-reboot exits).
	// Slot B and systemd-boot's fallback to it are TestNodeUpdatesInPlace's.
	broken := filepath.Join(work, "broken.raw")
	run(t, "cp", "--sparse=always", b.disk, broken)
	flipByte(t, broken, rootA.first*512+100)
	copyFile(t, ovmfVars, vars)
	brokenCtx, brokenCancel := context.WithTimeout(ctx, 8*time.Minute)
	defer brokenCancel()
	vm = startVM(brokenCtx, t, vmOptions{disk: broken, vars: vars, logFile: filepath.Join(work, "boot-broken.log")})
	err = vm.waitFor(brokenCtx, "step=mount-root status=fail", "step=verity status=fail")
	log = vm.console.String()
	vm.stop()
	if err != nil {
		t.Fatalf("boot with a flipped byte in ROOT-A: %v\nconsole:\n%s", err, tail(log, 6000))
	}
	t.Logf("slot A with a flipped byte; steps:\n  %s", strings.Join(stepLines(log), "\n  "))
	if !consoleHasLine(log, "step=mount-root status=fail", "input/output error") || !consoleHasLine(log, "step=verity status=fail", "dm-status=C", "roothash="+b.verityHash[:12]) {
		t.Error("slot A's flipped byte: no mount-root failure with an I/O error and a verity failure line with dm-status=C")
	}
	if strings.Contains(log, "step=switch-root status=ok") {
		t.Error("the init switched to a root whose verity check failed")
	}
}

// flipByte inverts the lowest bit of the byte at off in file.
func flipByte(t *testing.T, file string, off int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// consoleHasLine reports whether one step line of the console log contains all of subs.
func consoleHasLine(log string, subs ...string) bool {
	for _, line := range stepLines(log) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
