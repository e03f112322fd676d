package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/testenv"
)

// The in-place update end to end test: a node booted from disk.raw follows a channel of
// imgctl serve (reached through the relay, as the netboot tests reach their servers), writes
// the channel's image into its other slot, reboots into it and blesses it; an image whose
// configuration fails is tried BootTries times, then systemd-boot falls back and the node
// never installs it again; a node killed while writing the slot boots its old image and
// finishes the update on its next check.

// updateChannel is the channel the test node follows.
const updateChannel = "nightly"

// updateServer is imgctl serve's base URL as the guest reaches it (the relay on the guest
// network, see updateNetdev).
const updateServer = "http://" + filesAddr

// updateInterval is the node's check interval (the NodeConfig's minimum is 10s).
const updateInterval = "15s"

// updatePayloadSize is the size of the incompressible file that v4 adds early in the root
// (/etc): an update from v1 fetches most of the root after it, so that a resumed update
// visibly fetches less.
const updatePayloadSize = 8 << 20

// updateImage is one image of the test store.
type updateImage struct {
	name     string // v1, v2, v3, v4
	digest   string // the image (manifest) digest
	root     string // its root blob's digest: imgctl.root-digest of a slot that runs it
	rootSize int64
}

// updateImages are the test's images in one store (dir/store): v1 (its disk.raw the node
// starts from); v2 = v1 + a small file in the kubelet layer (a kubelet bump: the kubelet
// layer's files are at the end of the root); v3 = v2 + a pre-configure hook that fails; v4 =
// v1 + an incompressible file early in the root (most of the root's blocks change).
type updateImages struct {
	dir            string // store and cache of imgctl(ctx, t, dir, ...)
	disk           string // v1's disk.raw
	v1, v2, v3, v4 updateImage
}

// updateCache is the download and layer cache the update test's builds share across runs
// (like .cache/tools): a warm cache makes the three builds take seconds, not minutes.
func updateCache(t *testing.T) string { return e2eCache(t, "e2e-update") }

// e2eCache is .cache/NAME, an imgctl --store/--cache parent a test's builds share across runs,
// with its cache directory made.
func e2eCache(t *testing.T, name string) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("../.cache", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// updateTestLayer is the extra layer of every test image: the serial getty masked and a unit
// that prints, once per boot after configuration and blessing, which root runs (the
// kernel command line's imgctl.root-digest and imgctl.root), the loader entry systemd-boot
// chose, the units' states and the update state file. It never powers the guest off: the
// node lives on between checks.
func updateTestLayer(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "update-testlayer")
	writeTestLayer(t, root, map[string]string{
		"etc/systemd/system/imgctl-test-report.service": reportUnit("imgctl update test report", "kube-node-configuration.service imgctl-bless.service"),
		"usr/local/bin/imgctl-test-report": `#!/bin/bash
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p"; }
rel=v1
for f in /etc/imgctl-test-release-v3 /etc/imgctl-test-release /usr/share/imgctl-test/release; do
  if [ -f "$f" ]; then rel=$(cat "$f"); break; fi
done
# systemd-boot's LoaderEntrySelected: 4 bytes of attributes, then UTF-16.
entry=$(tail -c +5 /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f 2>/dev/null | tr -d '\0')
state=$(tr -d ' \n' </var/lib/imgctl/update/state.json 2>/dev/null)
echo "IMGCTL-UPDATE-REPORT release=$rel root-digest=$(arg imgctl.root-digest) root=$(arg imgctl.root) entry=$entry" \
  "configuration=$(systemctl is-active kube-node-configuration) kubelet=$(systemctl is-active kubelet)" \
  "bless=$(systemctl is-active imgctl-bless) uptime=$(cut -d' ' -f1 /proc/uptime) state=$state" > /dev/console
# What a failing run needs to see: the update units now and a minute later.
/usr/local/bin/imgctl-test-units
systemd-run --quiet --on-active=60 /usr/local/bin/imgctl-test-units
`,
		"usr/local/bin/imgctl-test-units": `#!/bin/sh
{
  echo "IMGCTL-TEST-UNITS begin uptime=$(cut -d' ' -f1 /proc/uptime)"
  systemctl --no-pager list-timers --all 'imgctl-*'
  systemctl --no-pager --lines=0 status 'imgctl-update.*' 'imgctl-bless.*'
  systemctl --no-pager list-jobs
  echo "IMGCTL-TEST-UNITS end"
} > /dev/console 2>&1
`,
	})
	return root
}

// buildUpdateImages builds v1 (raw, exported), v2, v3 and v4 into one store with the real
// kubelet.
func buildUpdateImages(ctx context.Context, t *testing.T) updateImages {
	t.Helper()
	testenv.Tools(t, "mmdebstrap")
	k8s := kubernetesTools(t)
	pause := testSandboxImage(t)
	work, dir := t.TempDir(), t.TempDir()
	cache := updateCache(t)
	if err := os.Symlink(filepath.Join(cache, "cache"), filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	common := updateTestLayer(t, work)
	// v2's kubelet layer has one more file.
	v2 := "kubelet=file://" + filepath.Join(work, "v2-release") + "#path=/usr/share/imgctl-test/release&mode=0644"
	writeFiles(t, work, map[string][]byte{"v2-release": []byte("v2\n")}, 0o644)
	// v4's extra file: incompressible, the same bytes every run (cache hits).
	v4 := filepath.Join(work, "v4-layer")
	payload := make([]byte, updatePayloadSize)
	rng := rand.NewChaCha8([32]byte{'i', 'm', 'g', 'c', 't', 'l', ' ', 'v', '4'})
	_, _ = rng.Read(payload)
	writeFiles(t, v4, map[string][]byte{"etc/imgctl-test-release": []byte("v4\n"), "etc/imgctl-test-payload": payload}, 0o644)
	// v3's configuration fails: a pre-configure hook exits 1 (kube-node-configuration fails,
	// the node is never blessed on it).
	v3 := filepath.Join(work, "v3-layer")
	writeFiles(t, v3, map[string][]byte{"etc/imgctl-test-release-v3": []byte("v3\n")}, 0o644)
	writeFiles(t, v3, map[string][]byte{"etc/imgctl/hooks.d/pre-configure.d/10-fail": []byte(
		"#!/bin/sh\necho 'IMGCTL-TEST-HOOK v3 fails its configuration on purpose' > /dev/console\nexit 1\n")}, 0o755)

	imgs := updateImages{dir: dir, disk: filepath.Join(work, "out-v1", "disk.raw")}
	build := func(name string, out string, sources ...string) updateImage {
		t.Helper()
		start := time.Now()
		args := []string{"--k8s", "1.21.13", "--target", "raw",
			"--lock", filepath.Join(cache, "imgctl.lock"), "--node-agent", nodeAgent(t),
			"--source", "kubelet=file://" + filepath.Join(k8s, "kubelet") + "#path=/usr/bin/kubelet&mode=0755",
			"--source", "kubelet=file://" + filepath.Join(k8s, "kubeadm") + "#path=/usr/bin/kubeadm&mode=0755",
			"--source", "kubelet=" + pause.uri}
		if out != "" {
			args = append(args, "--output", out)
		}
		for _, s := range sources {
			if !strings.Contains(s, "=") {
				s = "extra=file://" + s + "/" // a directory: the extra layer
			}
			args = append(args, "--source", s)
		}
		b := imgctlBuild(ctx, t, dir, args...)
		img := updateImage{name: name, digest: b.Digest}
		img.root, img.rootSize = imageRoot(ctx, t, dir, b.Digest)
		t.Logf("build %s: %v wall: image %s, root %s (%d MiB)", name, time.Since(start).Round(time.Second), img.digest, img.root, img.rootSize>>20)
		return img
	}
	imgs.v1 = build("v1", filepath.Join(work, "out-v1"), common)
	imgs.v2 = build("v2", "", common, v2)
	imgs.v3 = build("v3", "", common, v2, v3)
	imgs.v4 = build("v4", "", common, v4)
	roots := map[string]bool{}
	for _, i := range []updateImage{imgs.v1, imgs.v2, imgs.v3, imgs.v4} {
		roots[i.root] = true
	}
	if len(roots) != 4 {
		t.Fatalf("the images share a root: v1 %s, v2 %s, v3 %s, v4 %s", imgs.v1.root, imgs.v2.root, imgs.v3.root, imgs.v4.root)
	}
	return imgs
}

// writeFiles writes files (relative paths → contents) under root with mode.
func writeFiles(t *testing.T, root string, files map[string][]byte, mode os.FileMode) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// imageRoot returns the root blob's digest and size of a stored image (its artifacts'
// annotations, as imgctl images inspect shows them).
func imageRoot(ctx context.Context, t *testing.T, dir, image string) (string, int64) {
	t.Helper()
	out, err := imgctl(ctx, t, dir, "-o", "json", "images", "inspect", image)
	if err != nil {
		t.Fatal(err)
	}
	var insp struct {
		Manifest struct {
			Layers []struct{ Annotations map[string]string }
		}
	}
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("imgctl images inspect -o json: %v", err)
	}
	for _, l := range insp.Manifest.Layers {
		if d := l.Annotations[manifest.AnnotationRootDigest]; d != "" {
			n, err := strconv.ParseInt(l.Annotations[manifest.AnnotationRootSize], 10, 64)
			if err != nil {
				t.Fatalf("image %s: %s: %v", image, manifest.AnnotationRootSize, err)
			}
			return d, n
		}
	}
	t.Fatalf("image %s: no layer carries %s:\n%s", image, manifest.AnnotationRootDigest, out)
	return "", 0
}

// updateNodeConfig is the node's user data: the role node NodeConfig of the kubelet tests
// with an update section that follows updateChannel on updateServer every updateInterval,
// with no maintenance window.
func updateNodeConfig(t *testing.T, name string) string {
	t.Helper()
	return nodeConfig(t, name) + fmt.Sprintf("  update:\n    server: %s\n    channel: %s\n    interval: %s\n", updateServer, updateChannel, updateInterval)
}

// updateNetdev returns the guest's network: the IMDS at 169.254.169.254 and imgctl serve at
// filesAddr:80, both through the relay to their loopback servers (restrict=on: nothing else).
func updateNetdev(t *testing.T, imds, serve string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relayTo := func(addr string) string { return fmt.Sprintf("cmd:env %s=%s %s", relayEnv, addr, self) }
	return "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15," +
		"guestfwd=tcp:169.254.169.254:80-" + relayTo(imds) + ",guestfwd=tcp:" + filesAddr + ":80-" + relayTo(serve)
}

// updateNode is a node under test: a disk (kept across boots and qemu runs) and its NVRAM.
type updateNode struct {
	t          *testing.T
	disk, vars string
	netdev     string
	work       string
	runs       int
	vm         *vm
	start      time.Time
	rootA      gptPart // ROOT-A and ROOT-B of the disk
	rootB      gptPart
	espOffset  int64 // bytes
}

// newUpdateNode copies v1's disk.raw, enlarged to 4 GiB, and a fresh OVMF_VARS into work.
func newUpdateNode(t *testing.T, imgs updateImages, work, netdev string) *updateNode {
	t.Helper()
	n := &updateNode{t: t, disk: filepath.Join(work, "node.raw"), vars: filepath.Join(work, "vars.fd"), netdev: netdev, work: work}
	run(t, "cp", "--sparse=always", imgs.disk, n.disk)
	if err := os.Truncate(n.disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	copyFile(t, ovmfVars, n.vars)
	n.rootA, n.rootB = partInfo(t, n.disk, 2), partInfo(t, n.disk, 3)
	n.espOffset = partInfo(t, n.disk, 1).first * 512
	return n
}

// boot starts qemu on the node's disk; a guest reboot is a power cycle (see vm).
func (n *updateNode) boot(ctx context.Context) {
	n.t.Helper()
	n.runs++
	n.start = time.Now()
	n.vm = startVM(ctx, n.t, vmOptions{disk: n.disk, vars: n.vars, allowReboot: true, memoryMiB: 1536, netdev: n.netdev,
		logFile: filepath.Join(n.work, fmt.Sprintf("console-%d.log", n.runs))})
}

// log is the console of the current qemu run, kernel messages removed.
func (n *updateNode) log() string { return cleanConsole(n.vm.console.String()) }

// kill ends qemu with SIGKILL, by PID: a power cut.
func (n *updateNode) kill() {
	n.vm.stop()
}

// waitUntil polls the console until cond holds, the guest exits, d passes or ctx ends; it
// fails the test with the console's tail otherwise, and returns the time since qemu started.
func (n *updateNode) waitUntil(ctx context.Context, d time.Duration, what string, cond func(log string) bool) time.Duration {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c := consolePoll{
		read:   n.log,
		exited: n.vm.hasExited,
		logf:   n.t.Logf,
		every:  500 * time.Millisecond,
	}
	if err := c.until(ctx, cond); err != nil {
		log := n.log()
		n.t.Fatalf("waiting for %s: %v\nsteps:\n  %s\nconsole:\n%s", what, err, strings.Join(stepLines(log), "\n  "), tail(log, 8000))
	}
	return time.Since(n.start)
}

// consolePoll waits for a condition on a guest's console.
type consolePoll struct {
	read   func() string // the console so far
	exited func() bool   // whether the guest has exited
	logf   func(format string, args ...any)
	every  time.Duration
}

// until returns nil once cond holds on the console, or an error when the guest exits or ctx
// ends first. A guest kernel's soft-lockup line is logged, not fatal: under TCG on a loaded
// host the guest's clock runs on while its vCPU is starved, and the guest goes on once the
// host lets it (CI saw one at 40 s into a boot that the rollback test needed). A guest that
// stays stuck runs into ctx's deadline, and the error then names the lockup.
func (c consolePoll) until(ctx context.Context, cond func(log string) bool) error {
	tick := time.NewTicker(c.every)
	defer tick.Stop()
	seen := 0
	for {
		log := c.read()
		if cond(log) {
			return nil
		}
		lockups := guestLockup.FindAllString(log, -1)
		for _, l := range lockups[min(seen, len(lockups)):] {
			c.logf("the guest kernel reported a soft lockup (waiting on): %s", l)
		}
		seen = max(seen, len(lockups))
		select {
		case <-ctx.Done():
			if seen > 0 {
				return fmt.Errorf("%w, after %v (last: %s)", ctx.Err(), errGuestLockup, lockups[len(lockups)-1])
			}
			return ctx.Err()
		case <-tick.C:
			if c.exited() {
				if cond(c.read()) {
					return nil
				}
				return errors.New("the guest exited")
			}
		}
	}
}

// slot names the slot a report's imgctl.root= is (A or B), or "?".
func (n *updateNode) slot(r updateReport) string {
	switch strings.ToLower(strings.TrimPrefix(r.fields["root"], "PARTUUID=")) {
	case n.rootA.guid:
		return "A"
	case n.rootB.guid:
		return "B"
	}
	return "?"
}

// entries lists loader/entries on the ESP of the node's disk (qemu must not be running).
func (n *updateNode) entries() []string {
	n.t.Helper()
	out := run(n.t, "mdir", "-b", "-i", fmt.Sprintf("%s@@%d", n.disk, n.espOffset), "::loader/entries")
	var names []string
	for _, l := range strings.Fields(out) {
		names = append(names, filepath.Base(l))
	}
	return names
}

// updateReport is one IMGCTL-UPDATE-REPORT line: key=value fields.
type updateReport struct {
	line   string
	fields map[string]string
}

var updateReportLine = regexp.MustCompile(`IMGCTL-UPDATE-REPORT [^\r\n]*`)

// updateReports returns the report lines of a console log, in order.
func updateReports(log string) []updateReport {
	var out []updateReport
	for _, l := range updateReportLine.FindAllString(log, -1) {
		r := updateReport{line: l, fields: map[string]string{}}
		for _, f := range strings.Fields(l)[1:] {
			if k, v, ok := strings.Cut(f, "="); ok {
				r.fields[k] = v
			}
		}
		out = append(out, r)
	}
	return out
}

// lastReport returns the last report of a log whose release is rel.
func lastReport(log, rel string) (updateReport, bool) {
	rs := updateReports(log)
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].fields["release"] == rel {
			return rs[i], true
		}
	}
	return updateReport{}, false
}

// imgctl serve's metrics (/metrics samples) the test reads: blob bytes sent, channel pointers
// served.
const (
	blobBytes       = `imgctl_serve_response_bytes_total{route="blobs"}`
	channelRequests = `imgctl_serve_requests_total{code="200",route="channels"}`
)

// Step lines of the update agent and of blessing (cmd/imgctl-node).
const (
	stepBlessOK   = "step=update-bless status=ok"
	stepBlessFail = "step=update-bless status=fail"
	stepInstallOK = "step=update-install status=ok"
	stepRollback  = "step=update-rollback status=fail"
)

// installLine matches the install step line of an image; fetched= is what it downloaded.
func installLine(image string) *regexp.Regexp {
	return regexp.MustCompile(regexp.QuoteMeta(stepInstallOK) + `[^\r\n]*image=` + regexp.QuoteMeta(image) + `[^\r\n]*`)
}

// fetchedBytes is the fetched=BYTES of an install line (-1 if it has none).
func fetchedBytes(line string) int64 { return lineBytes(line, "fetched") }

// keptBytes is the kept=BYTES of an install line: blocks already right in the slot.
func keptBytes(line string) int64 { return lineBytes(line, "kept") }

func lineBytes(line, key string) int64 {
	m := regexp.MustCompile(`\b` + key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// refusedLine matches the agent's line for a check that finds the channel's image among the
// node's failed images.
func refusedLine(image string) *regexp.Regexp {
	return regexp.MustCompile(`step=update-check status=skip [^\r\n]*failed on this node[^\r\n]*image=` + regexp.QuoteMeta(image))
}

// progressLine matches the agent's progress while it writes a slot: written=BYTES of total=BYTES.
var progressLine = regexp.MustCompile(`step=update-write status=progress[^\r\n]*\bwritten=(\d+)[^\r\n]*\btotal=(\d+)`)

// writtenFraction is how far the last progress line of log got (0 without one).
func writtenFraction(log string) float64 {
	ms := progressLine.FindAllStringSubmatch(log, -1)
	if ms == nil {
		return 0
	}
	m := ms[len(ms)-1]
	w, _ := strconv.ParseFloat(m[1], 64)
	total, _ := strconv.ParseFloat(m[2], 64)
	if total == 0 {
		return 0
	}
	return w / total
}

// after is the part of log after the first occurrence of marker ("" if it has none).
func after(log, marker string) string {
	i := strings.Index(log, marker)
	if marker == "" || i < 0 {
		return ""
	}
	return log[i+len(marker):]
}

// booted reports whether log has a blessing and then a report of release rel.
func booted(log, rel string) bool {
	_, ok := lastReport(after(log, stepBlessOK), rel)
	return ok
}

// TestNodeUpdatesInPlace: a node booted from v1's disk.raw follows its channel on imgctl
// serve. v2 in the channel: the node writes slot B, reboots into it, blesses it. v3 (its
// configuration fails) in the channel: the node writes slot A, boots it BootTries times
// without blessing it, systemd-boot falls back to v2, the node records v3 as failed and never
// installs it again. A fresh v1 node killed while writing slot B (v4: most blocks change) boots
// v1 and completes the update on its next check, keeping what it had written.
func TestNodeUpdatesInPlace(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "sgdisk", "mdir")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	imgs := buildUpdateImages(ctx, t)
	promote := func(img updateImage) {
		t.Helper()
		if _, err := imgctl(ctx, t, imgs.dir, "promote", img.digest, "--to", updateChannel, "--force", "--reason", "update e2e "+img.name); err != nil {
			t.Fatal(err)
		}
	}
	promote(imgs.v1)
	work := t.TempDir()
	inv := filepath.Join(work, "inventory.yaml") // no machines: nothing netboots here
	writeFiles(t, work, map[string][]byte{"inventory.yaml": []byte("apiVersion: imgctl/v1alpha1\nkind: Inventory\ngroups: []\nmachines: []\n")}, 0o644)
	srv := startServe(ctx, t, imgs.dir, inv)
	defer func() {
		if t.Failed() {
			t.Logf("imgctl serve log:\n%s", tail(srv.log.String(), 12000))
		}
	}()
	imds := httptest.NewServer(&fakeIMDS{UserData: updateNodeConfig(t, "node-update")})
	defer imds.Close()
	netdev := updateNetdev(t, imds.Listener.Addr().String(), srv.addr)

	t.Run("v2-then-failing-v3", func(t *testing.T) {
		n := newUpdateNode(t, imgs, t.TempDir(), netdev)
		n.boot(ctx)
		defer n.kill()
		// v1 boots from slot A and is blessed (the first boot of a new disk counts tries too).
		took := n.waitUntil(ctx, 10*time.Minute, "v1 blessed", func(log string) bool { return booted(log, "v1") })
		r, _ := lastReport(n.log(), "v1")
		t.Logf("v1 booted and blessed %v after qemu started: %s", took.Round(time.Second), r.line)
		if r.fields["root-digest"] != imgs.v1.root || n.slot(r) != "A" {
			t.Fatalf("v1 boot: %s; want root-digest=%s from ROOT-A", r.line, imgs.v1.root)
		}

		// v2 in the channel: installed into slot B, rebooted into, blessed.
		promoted := time.Now()
		served := srv.metrics(t)[blobBytes]
		promote(imgs.v2)
		inst := installLine(imgs.v2.digest)
		n.waitUntil(ctx, 10*time.Minute, "v2 installed", func(log string) bool { return inst.MatchString(log) })
		line := inst.FindString(n.log())
		fetched := fetchedBytes(line)
		t.Logf("v2 installed %v after the promotion: %s", time.Since(promoted).Round(time.Second), line)
		installed := time.Now()
		n.waitUntil(ctx, 10*time.Minute, "v2 blessed", func(log string) bool { return booted(after(log, line), "v2") })
		r, _ = lastReport(n.log(), "v2")
		t.Logf("v2 booted and blessed %v after its install: %s", time.Since(installed).Round(time.Second), r.line)
		if r.fields["root-digest"] != imgs.v2.root || n.slot(r) != "B" || r.fields["configuration"] != "active" || r.fields["kubelet"] != "active" {
			t.Fatalf("v2 boot: %s; want root-digest=%s from ROOT-B, configuration and kubelet active", r.line, imgs.v2.root)
		}
		// The node fetched exactly what the plan over the two roots' block hashes says: the
		// blocks of v2 found nowhere in v1's slot, and v2's hash area.
		if want := plannedFetch(t, imgs.dir, imgs.v1, imgs.v2); fetched != want {
			t.Errorf("the v2 update fetched %d bytes, the plan over v1's and v2's blocks %d", fetched, want)
		}
		t.Logf("the v2 update fetched %d bytes: %.1f%% of its %d-byte root", fetched, 100*float64(fetched)/float64(imgs.v2.rootSize), imgs.v2.rootSize)
		// The server saw it: blob bytes served (the root's blocks and hash area, the manifest,
		// the kernel and initrd) since the promotion, at least what the node counted.
		m := srv.metrics(t)
		if got := m[blobBytes] - served; got < float64(fetched) || m[channelRequests] == 0 {
			t.Errorf("imgctl serve sent %.0f blob bytes since the promotion (the node fetched %d) and answered %v channel requests", got, fetched, m[channelRequests])
		} else {
			t.Logf("imgctl serve sent %.0f blob bytes for the v2 update and answered %v channel requests so far", got, m[channelRequests])
		}

		// v3 in the channel: installed into slot A, fails its configuration BootTries times,
		// systemd-boot falls back to v2, the node records v3 as failed.
		promoted = time.Now()
		promote(imgs.v3)
		inst = installLine(imgs.v3.digest)
		n.waitUntil(ctx, 10*time.Minute, "v3 installed", func(log string) bool { return inst.MatchString(log) })
		line = inst.FindString(n.log())
		t.Logf("v3 installed %v after the promotion: %s", time.Since(promoted).Round(time.Second), line)
		installed = time.Now()
		n.waitUntil(ctx, 20*time.Minute, "v3 rolled back", func(log string) bool { return strings.Contains(log, stepRollback) })
		t.Logf("v3 rolled back %v after its install", time.Since(installed).Round(time.Second))
		log := n.log()
		rollback := regexp.MustCompile(regexp.QuoteMeta(stepRollback) + `[^\r\n]*`).FindString(log)
		if !strings.Contains(rollback, "image="+imgs.v3.digest) {
			t.Errorf("the rollback line does not name v3 (%s): %s", imgs.v3.digest, rollback)
		}
		if got := strings.Count(after(log, line), stepBlessFail); got != 3 {
			t.Errorf("v3's boots failed blessing %d times, want 3 (BootTries)", got)
		}
		// The fallback boot runs v2 from slot B, and v3 is in its failed images.
		n.waitUntil(ctx, 3*time.Minute, "the report after the rollback", func(log string) bool {
			_, ok := lastReport(after(log, rollback), "v2")
			return ok
		})
		r, _ = lastReport(after(n.log(), rollback), "v2")
		t.Logf("after the rollback: %s", r.line)
		if r.fields["root-digest"] != imgs.v2.root || n.slot(r) != "B" || !strings.Contains(r.fields["state"], imgs.v3.digest) {
			t.Errorf("after the rollback: %s; want v2 from ROOT-B and v3 (%s) failed in the state", r.line, imgs.v3.digest)
		}
		// The next checks refuse v3: it failed here.
		refused := refusedLine(imgs.v3.digest)
		n.waitUntil(ctx, 3*time.Minute, "v3 refused", func(log string) bool { return refused.MatchString(after(log, rollback)) })
		log = n.log()
		t.Logf("the next check: %s", refused.FindString(after(log, rollback)))
		if got := len(inst.FindAllString(log, -1)); got != 1 {
			t.Errorf("v3 was installed %d times, want once", got)
		}
		t.Logf("steps:\n  %s", strings.Join(stepLines(log), "\n  "))
	})
	if t.Failed() {
		return
	}

	t.Run("killed-while-writing-resumes", func(t *testing.T) {
		// v4 changes most of the root's blocks: a power cut half-way leaves much written.
		promote(imgs.v4)
		n := newUpdateNode(t, imgs, t.TempDir(), netdev)
		n.boot(ctx)
		inst := installLine(imgs.v4.digest)
		n.waitUntil(ctx, 12*time.Minute, "slot B half written", func(log string) bool {
			return strings.Contains(log, stepBlessOK) && writtenFraction(log) >= 0.5
		})
		t.Logf("killing qemu at %.0f%% of slot B: %s", 100*writtenFraction(n.log()), lastMatch(progressLine, n.log()))
		n.kill()
		if inst.MatchString(n.log()) {
			t.Fatalf("the install finished before qemu was killed: %s", inst.FindString(n.log()))
		}
		if es := n.entries(); strings.Contains(strings.Join(es, " "), "imgctl-b") {
			t.Errorf("the ESP has an entry for slot B after the power cut: %q", es)
		}
		// The next boot runs v1 and completes the update, keeping what was written.
		n.boot(ctx)
		defer n.kill()
		took := n.waitUntil(ctx, 10*time.Minute, "v4 installed after the power cut", func(log string) bool { return inst.MatchString(log) })
		log := n.log()
		if rs := updateReports(log); len(rs) == 0 || rs[0].fields["release"] != "v1" || n.slot(rs[0]) != "A" {
			t.Errorf("the boot after the power cut: %v; want v1 from ROOT-A", rs)
		}
		line := inst.FindString(log)
		t.Logf("v4 installed %v after qemu started again: %s", took.Round(time.Second), line)
		full := plannedFetch(t, imgs.dir, imgs.v1, imgs.v4)
		// Blocks the cut-off write had already put in place are kept, and nothing is fetched twice.
		// (Fewer bytes fetched is not required: the slot is written in order, and with the late
		// groups v4's changed blocks lie near its end, after the copied ones, so a cut at 52 %
		// may come before the first fetch.)
		if f := fetchedBytes(line); f < 0 || f > full || keptBytes(line) <= 0 {
			t.Errorf("the resumed update fetched %d bytes and kept %d; an uninterrupted one fetches %d: want no more, and blocks kept", f, keptBytes(line), full)
		} else {
			t.Logf("the resumed update fetched %d bytes (%.0f%% of the %d an uninterrupted one fetches) and kept %d", f, 100*float64(f)/float64(full), full, keptBytes(line))
		}
		n.waitUntil(ctx, 10*time.Minute, "v4 blessed", func(log string) bool { return booted(after(log, line), "v4") })
		r, _ := lastReport(n.log(), "v4")
		if r.fields["root-digest"] != imgs.v4.root || n.slot(r) != "B" {
			t.Errorf("after the resumed update: %s; want v4 from ROOT-B", r.line)
		}
		t.Logf("steps:\n  %s", strings.Join(stepLines(n.log()), "\n  "))
	})
}

// plannedFetch is what an update from image from (running) to image to, into a slot of zeros,
// fetches as the node plans it (update.PlanBlocks over the roots' dm-verity level-0 hashes,
// read from the store's root blobs): the blocks of to found nowhere in from, and to's hash area.
func plannedFetch(t *testing.T, dir string, from, to updateImage) int64 {
	t.Helper()
	tree := func(img updateImage) (verity.Appended, int64) {
		t.Helper()
		f, err := os.Open(filepath.Join(dir, "store", "blobs", "sha256", strings.TrimPrefix(img.root, "sha256:")))
		if err != nil {
			t.Fatalf("%s's root blob: %v", img.name, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		a, err := verity.ReadAppended(f, fi.Size())
		if err != nil {
			t.Fatalf("%s's root blob: %v", img.name, err)
		}
		return a, fi.Size()
	}
	a, _ := tree(from)
	b, size := tree(to)
	zero := verity.HashBlock(make([]byte, verity.BlockSize))
	target := make([][32]byte, len(b.Leaves))
	for i := range target {
		target[i] = zero
	}
	p := update.PlanBlocks(b.Leaves, target, a.Leaves)
	return p.Bytes(p.Fetch) + size - b.DataSize
}

// lastMatch is re's last match in s ("" if none).
func lastMatch(re *regexp.Regexp, s string) string {
	ms := re.FindAllString(s, -1)
	if ms == nil {
		return ""
	}
	return ms[len(ms)-1]
}

// TestUpdateConsoleLines checks, without qemu, how TestNodeUpdatesInPlace reads a console: the
// report lines' fields, the install line's fetched bytes, the write progress and what follows
// a marker.
func TestUpdateConsoleLines(t *testing.T) {
	img := "sha256:" + strings.Repeat("ab", 32)
	log := cleanConsole("IMGCTL-UPDATE-REPORT release=v1 root-digest=sha256:11 root=PARTUUID=AAAA entry=imgctl-a.conf configuration=active state=\r\n" +
		"imgctl-node step=update-write status=progress written=10 total=100\n" +
		"imgctl-node step=update-wr[   12.5] random kernel line\nite status=progress written=60 total=100\n" +
		"imgctl-node " + stepInstallOK + " image=" + img + " fetched=8400000 reused=190000000\n" +
		stepBlessOK + " image=" + img + "\n" +
		`imgctl-node step=update-check status=skip latency=9ms reason="the channel's image failed on this node before (never retried automatically)" image=` + img + " version=v3\n" +
		"IMGCTL-UPDATE-REPORT release=v2 root-digest=sha256:22 root=PARTUUID=BBBB entry= state={\"failed\":[]}\n")
	rs := updateReports(log)
	if len(rs) != 2 || rs[0].fields["release"] != "v1" || rs[0].fields["root"] != "PARTUUID=AAAA" || rs[1].fields["state"] != `{"failed":[]}` || rs[1].fields["entry"] != "" {
		t.Fatalf("reports %+v", rs)
	}
	if got := writtenFraction(log); got != 0.6 {
		t.Errorf("written fraction %v, want 0.6 (the last progress line, mended)", got)
	}
	line := installLine(img).FindString(log)
	if fetchedBytes(line) != 8400000 || installLine("sha256:"+strings.Repeat("cd", 32)).MatchString(log) {
		t.Errorf("install line %q: fetched %d", line, fetchedBytes(line))
	}
	if r, ok := lastReport(log, "v1"); !ok || r.fields["root-digest"] != "sha256:11" {
		t.Errorf("last v1 report %+v", r)
	}
	if !booted(log, "v2") || booted(log, "v1") || booted(after(log, line), "v1") || after(log, "nowhere") != "" {
		t.Error("booted/after: a report is taken from before the blessing")
	}
	if !refusedLine(img).MatchString(log) || refusedLine("sha256:"+strings.Repeat("cd", 32)).MatchString(log) {
		t.Error("the refusal line of a failed image is not recognized")
	}
	n := &updateNode{rootA: gptPart{guid: "aaaa"}, rootB: gptPart{guid: "bbbb"}}
	if n.slot(rs[0]) != "A" || n.slot(rs[1]) != "B" {
		t.Errorf("slots %s %s", n.slot(rs[0]), n.slot(rs[1]))
	}
}

// TestConsolePollLockup: a soft-lockup line on the console is waited through (CI failed the
// rollback test on one at 40 s into a boot); a guest that never gets there ends at the
// deadline with the lockup named, and an exited guest ends the wait at once.
func TestConsolePollLockup(t *testing.T) {
	const lockup = "[   40.758935] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [imgctl-node:412]\n"
	for _, tc := range []struct {
		name     string
		consoles []string // what read returns, one per poll; the last repeats
		exits    bool
		want     string // "" for success, else a substring of the error
		logged   int
	}{
		{name: "condition after a lockup", consoles: []string{"boot\n", "boot\n" + lockup, "boot\n" + lockup + "READY\n"}, logged: 1},
		{name: "condition without a lockup", consoles: []string{"boot\n", "boot\nREADY\n"}},
		{name: "stuck after a lockup", consoles: []string{"boot\n" + lockup}, want: "soft lockup", logged: 1},
		{name: "two lockups, each logged once", consoles: []string{lockup, lockup + lockup, lockup + lockup + "READY"}, logged: 2},
		{name: "guest exits", consoles: []string{"boot\n"}, exits: true, want: "exited"},
		{name: "deadline without a lockup", consoles: []string{"boot\n"}, want: "deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			polls, logged := 0, 0
			c := consolePoll{
				read: func() string {
					s := tc.consoles[min(polls, len(tc.consoles)-1)]
					polls++
					return s
				},
				exited: func() bool { return tc.exits },
				logf:   func(string, ...any) { logged++ },
				every:  time.Millisecond,
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := c.until(ctx, func(log string) bool { return strings.Contains(log, "READY") })
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("until: %v, want success", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("until: %v, want an error containing %q", err, tc.want)
			}
			if logged != tc.logged {
				t.Errorf("logged %d lockups, want %d", logged, tc.logged)
			}
		})
	}
}
