package test

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gcrname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

// relayEnv makes the test binary a relay (see TestMain): qemu's guestfwd=…-cmd: starts one per
// guest connection with the connection on stdin/stdout, and it forwards to a loopback server.
const relayEnv = "IMGCTL_TEST_RELAY"

// fakeIMDS speaks EC2's IMDSv2 for user data (bootenv.IMDS).
type fakeIMDS = bootenv.IMDS

// kubernetesTools returns the directory with a real kubelet, kubeadm v1.21.13 and crictl, built
// from the Go module proxy by scripts/build-kubernetes.sh on first use and cached in .cache/tools.
func kubernetesTools(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("IMGCTL_KUBERNETES_DIR")
	if dir == "" {
		abs, err := filepath.Abs("../.cache/tools/kubernetes/v1.21.13")
		if err != nil {
			t.Fatal(err)
		}
		dir = abs
	}
	_, err := os.Stat(filepath.Join(dir, "kubelet"))
	if _, cerr := os.Stat(filepath.Join(dir, "crictl")); err != nil || cerr != nil {
		t.Logf("building kubelet, kubeadm v1.21.13 and crictl into %s (first run only, ~4 min)", dir)
		cmd := exec.Command("../scripts/build-kubernetes.sh", "1.21.13", dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("scripts/build-kubernetes.sh: %v\n%s", err, out)
		}
	}
	return dir
}

// kubeletTestLayer masks the serial getty and adds a report unit that runs once
// kube-node-configuration.service has finished (either way): it prints what the test checks in
// one console line and powers the guest off.
func kubeletTestLayer(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "kubelet-testlayer")
	files := map[string]string{
		"etc/systemd/system/imgctl-test-report.service": reportUnit("imgctl kubelet boot test report", "kube-node-configuration.service"),
		"usr/local/bin/imgctl-test-report": `#!/bin/bash
sleep 5 # the kubelet must stay up, not just start
healthz=$( (exec 3<>/dev/tcp/127.0.0.1/10248 && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3) 2>&1)
ctr=$(ctr --address /run/containerd/containerd.sock version 2>&1 | tr -s ' \n\t' ' ')
cri=$(imgctl-node cri-version 2>&1 | tr -s ' \n\t' ' ')
kv=$(kubelet --version 2>&1)
images=$(ctr --namespace k8s.io images ls -q 2>&1 | grep pause | tr '\n' ' ' | sed 's/ $//')
# containerd's overlayfs snapshotter (the CRI's default) loads only on a store that is not an overlay.
snapshotter=$(ctr --address /run/containerd/containerd.sock plugins ls 2>&1 | awk '$2 == "overlayfs" { print $NF }')
systemctl start kube-logrotate.service
logrotate=$(systemctl show -p Result --value kube-logrotate.service)
sandbox=$(grep sandbox_image /etc/containerd/config.toml | sed 's/^ *//')
labels=$(grep -o -e '--node-labels=[^ "]*' /var/lib/kubelet/kubeadm-flags.env | cut -d= -f2-)
echo "IMGCTL-TEST-REPORT installation=$(systemctl is-active kube-node-installation) configuration=$(systemctl is-active kube-node-configuration)" \
  "kubelet=$(systemctl is-active kubelet) containerd=$(systemctl is-active containerd) monitors=$(systemctl is-active kubelet-monitor kube-container-runtime-monitor | tr '\n' ,)" \
  "healthz=$healthz kubelet_version=[$kv] hostname=$(hostname)" \
  "userspace_us=$(systemctl show -p UserspaceTimestampMonotonic --value)" \
  "kubelet_start_us=$(systemctl show -p ExecMainStartTimestampMonotonic --value kubelet)" \
  "logrotate=$logrotate snapshotter=$snapshotter uptime=$(cut -d' ' -f1 /proc/uptime) ctr=[$ctr] cri=[$cri] images=[$images] labels=[$labels] $sandbox" > /dev/console
journalctl -b -u kubelet --no-pager -n 15 -o cat > /dev/console 2>&1
systemctl --no-block poweroff
`,
		// A site hook: runs after configuration with the node's role and name.
		"etc/imgctl/hooks.d/post-configure.d/10-report": `#!/bin/sh
echo "IMGCTL-TEST-HOOK phase=$IMGCTL_HOOK_PHASE role=$IMGCTL_ROLE name=$IMGCTL_NODE_NAME source=$IMGCTL_METADATA_SOURCE" > /dev/console
`,
	}
	writeTestLayer(t, root, files)
	os.Chmod(filepath.Join(root, "etc/imgctl/hooks.d/post-configure.d/10-report"), 0o755)
	return root
}

// TestNodeJoinsWithRealKubelet boots the default node image (Debian, containerd, the bootstrap
// units, a real kubelet v1.21.13 built from the Go proxy) with role node metadata served by an
// IMDSv2 test server that the guest reaches at 169.254.169.254 through qemu's guestfwd and a
// loopback relay. It checks the installation and configuration steps on the console, that
// containerd answers (ctr, CRI), and that the kubelet runs with our configuration, talks CRI to
// containerd and answers /healthz (there is no API server: it is unreachable by design).
func TestNodeJoinsWithRealKubelet(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	k8s := kubernetesTools(t)
	work, dir := t.TempDir(), t.TempDir()
	pause := testSandboxImage(t)
	out := filepath.Join(dir, "out")
	if _, err := imgctl(ctx, t, dir, "build", "--k8s", "1.21.13", "--target", "raw",
		"--lock", filepath.Join(work, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://"+filepath.Join(k8s, "kubelet")+"#path=/usr/bin/kubelet&mode=0755",
		"--source", "kubelet=file://"+filepath.Join(k8s, "kubeadm")+"#path=/usr/bin/kubeadm&mode=0755",
		"--source", "kubelet=file://"+filepath.Join(k8s, "crictl")+"#path=/usr/bin/crictl&mode=0755",
		"--source", "kubelet="+pause.uri,
		"--source", "extra=file://"+kubeletTestLayer(t, work)+"/"); err != nil {
		t.Fatal(err)
	}

	imds := &fakeIMDS{UserData: nodeConfig(t, "node-e2e")}
	srv := httptest.NewServer(imds)
	defer srv.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The guest's network is 169.254.0.0/16 so that 169.254.169.254 is on it (slirp forwards only
	// addresses inside its network); restrict=on keeps everything else off.
	netdev := fmt.Sprintf("user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,"+
		"guestfwd=tcp:169.254.169.254:80-cmd:env %s=%s %s", relayEnv, strings.TrimPrefix(srv.URL, "http://"), self)

	disk := filepath.Join(work, "boot.raw")
	run(t, "cp", "--sparse=always", filepath.Join(out, "disk.raw"), disk)
	if err := os.Truncate(disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(work, "vars.fd")
	copyFile(t, ovmfVars, vars)
	bootCtx, bootCancel := context.WithTimeout(ctx, 10*time.Minute)
	defer bootCancel()
	start := time.Now()
	vm := startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, memoryMiB: 1536, netdev: netdev, logFile: filepath.Join(work, "boot.log")})
	err = vm.waitFor(bootCtx, "IMGCTL-TEST-REPORT")
	log := vm.console.String()
	if err != nil {
		t.Fatalf("boot: %v\nconsole:\n%s", err, tail(log, 8000))
	}
	select {
	case <-vm.done:
	case <-time.After(2 * time.Minute):
		t.Error("the guest did not power off after the report")
	}
	log = cleanConsole(vm.console.String())
	steps := stepLines(log)
	t.Logf("report after %v wall; steps:\n  %s", time.Since(start).Round(time.Second), strings.Join(steps, "\n  "))
	report := regexp.MustCompile(`IMGCTL-TEST-REPORT [^\r\n]*`).FindString(log)
	t.Log(report)

	// A disk image's root is mapped through dm-verity (a network root is verified whole).
	if !strings.Contains(log, "step=verity status=ok") {
		t.Error("console lacks step=verity status=ok: the disk's root was not mapped through dm-verity")
	}
	checkKubeletBoot(t, log, report, pause, "node-e2e", imdsSource, imds)
}

// nodeConfig is the user data of a role node named name: a NodeConfig with a test cluster CA and
// kubelet client credentials (there is no API server).
func nodeConfig(t *testing.T, name string) string {
	t.Helper()
	doc, err := bootenv.NodeConfig(name, map[string]string{"imgctl.dev/test": "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// imdsSource is the metadata source of a node whose NodeConfig came from the fake IMDS.
const imdsSource = "imds http://169.254.169.254/latest/user-data"

// checkKubeletBoot checks the console log and the report line of a node named name that booted
// the kubelet test image (kubeletTestLayer) with role node metadata from source (as the
// metadata step names it), served by imds if that is not nil, and logs the boot-to-kubelet
// latency.
func checkKubeletBoot(t *testing.T, log, report string, pause sandboxImage, name, source string, imds *fakeIMDS) {
	t.Helper()
	// On a dm-verity root the binaries are not hashed again; a network root's are.
	verify := "step=verify-binaries status=ok"
	if strings.Contains(log, "step=verity status=ok") {
		verify = "step=verify-binaries status=skip"
		if !regexp.MustCompile(`step=verify-binaries status=skip [^\n]*reason=verity`).MatchString(log) {
			t.Error("console lacks reason=verity on the skipped verify-binaries line")
		}
	}
	for _, want := range []string{
		verify, "step=modules status=ok", "step=sysctl status=ok",
		"step=directories status=ok", "step=metadata status=ok", `source="` + source + `"`,
		"step=hostname status=ok", "step=render status=ok", "sandbox=" + pause.name, "step=containerd status=ok",
		"step=images status=ok", "imported=" + pause.name,
		"step=kubelet-start status=ok", "step=kubelet-healthy status=ok",
		"step=container-store status=ok", "step=hook status=ok", "IMGCTL-TEST-HOOK phase=post-configure role=node name=" + name + " source=" + source,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	for _, want := range []string{
		"installation=active", "configuration=active", "kubelet=active", "containerd=active",
		"monitors=active,active,", "healthz=ok", "kubelet_version=[Kubernetes v1.21.13]", "hostname=" + name,
		"Server: Version: 1.6.20", "RuntimeName: containerd",
		"images=[" + pause.name + "]", `sandbox_image = "` + pause.name + `"`, "logrotate=success",
		"snapshotter=ok",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if imds != nil {
		if r := imds.Requests(); !bootenv.IMDSv2Flow(r) {
			t.Errorf("IMDS requests = %q, want the IMDSv2 token flow", r)
		}
	}
	// Boot-to-kubelet latency (BENCHMARKS.md): from systemd's start to the kubelet's, guest clock.
	us := regexp.MustCompile(`userspace_us=(\d+) kubelet_start_us=(\d+)`).FindStringSubmatch(report)
	if us != nil {
		u, _ := strconv.ParseInt(us[1], 10, 64)
		k, _ := strconv.ParseInt(us[2], 10, 64)
		t.Logf("kubelet started %.1f s after systemd (guest uptime %.1f s)", float64(k-u)/1e6, float64(k)/1e6)
	} else {
		t.Errorf("report lacks the timestamps")
	}
}

type sandboxImage struct{ uri, name string }

// testSandboxImage serves a small linux/amd64 image as REGISTRY/pause:3.4.1 from
// go-containerregistry's registry on loopback and returns the source URI that bakes it into the
// kubelet layer as an OCI archive, and the image name the node should import it as.
func testSandboxImage(t *testing.T) sandboxImage {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(stdlog.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(reg.URL, "http://") + "/pause:3.4.1"
	ref, err := gcrname.ParseReference(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return sandboxImage{uri: "oci://" + name + "@" + d.String() + "#image=/usr/lib/imgctl/images/pause.tar", name: name}
}

// TestRelayPassesOnServerClose runs the relay as libslirp runs a guestfwd cmd: (one socket as
// stdin, stdout and stderr) and checks that a server closing its connection ends the guest's
// connection too, at once: a response delimited by the close (or cut off, as the netboot
// tests' dropped download) must not look to the guest like a stalled one.
func TestRelayPassesOnServerClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("partial"))
		c.Close()
	}()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestEnd, relayEnd := os.NewFile(uintptr(fds[0]), "guest"), os.NewFile(uintptr(fds[1]), "relay")
	guest, err := net.FileConn(guestEnd)
	guestEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), relayEnv+"="+ln.Addr().String())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = relayEnd, relayEnd, relayEnd
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	relayEnd.Close()
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	guest.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(guest)
	if err != nil || string(got) != "partial" {
		t.Fatalf("the guest read %q, %v; want \"partial\" and then the end of the connection", got, err)
	}
}
