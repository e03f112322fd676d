package source

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/imgctl/imgctl/layers/testenv"
)

// TestOCIArchiveInterop checks image archives against the tools that consume them: skopeo
// reads them as oci-archive:, and containerd 1.6 (what the node runs) imports them with
// `ctr -n k8s.io images import` under the name index.json gives, as the node does at boot.
func TestOCIArchiveInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs skopeo and a throwaway containerd (skipped with -short)")
	}
	testenv.Root(t, "running containerd (run as root, or sudo go test -run TestOCIArchiveInterop ./layers/source/)")
	testenv.Tools(t, "containerd", "ctr", "skopeo")
	bin := map[string]string{}
	for _, b := range []string{"containerd", "ctr", "skopeo"} {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Fatal(err)
		}
		bin[b] = p
	}

	host := startRegistry(t)
	idx, amd := testIndex(t) // Docker media types, through an index
	idxDigest := push(t, host+"/test/pause:3.9", idx)
	plain := testImage(t, "amd64", true) // OCI media types, a manifest pinned directly
	plainDigest := push(t, host+"/test/plain:1", plain)
	images := []struct {
		raw, name string
		img       v1.Image
	}{
		{raw: "oci://" + host + "/test/pause:3.9@" + idxDigest + "#image=" + archivePath + "&name=registry.k8s.io/pause:3.9", name: "registry.k8s.io/pause:3.9", img: amd},
		{raw: "oci://" + host + "/test/plain@" + plainDigest + "#image=" + archivePath, name: host + "/test/plain@" + plainDigest, img: plain},
	}

	dir := t.TempDir()
	env := newTestEnv(t)
	files := make([]string, len(images))
	for i, im := range images {
		_, archive := materializeArchive(t, env, im.raw)
		files[i] = filepath.Join(dir, fmt.Sprintf("image%d.tar", i))
		if err := os.WriteFile(files[i], archive, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	run := func(name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin[name], args...).CombinedOutput()
		t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), out)
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	t.Run("skopeo", func(t *testing.T) {
		for i, im := range images {
			var got struct {
				Digest       string
				Os           string
				Architecture string
				Layers       []string
			}
			if err := json.Unmarshal([]byte(run("skopeo", "inspect", "oci-archive:"+files[i])), &got); err != nil {
				t.Fatal(err)
			}
			md, _ := im.img.Digest()
			m, _ := im.img.Manifest()
			if got.Digest != md.String() || got.Os != "linux" || got.Architecture != "amd64" || len(got.Layers) != len(m.Layers) {
				t.Errorf("skopeo inspect %s: %+v, want digest %s, linux/amd64, %d layers", files[i], got, md, len(m.Layers))
			}
		}
	})

	t.Run("containerd", func(t *testing.T) {
		sock := startContainerd(t, bin["containerd"], bin["ctr"])
		ctr := func(args ...string) string {
			return run("ctr", append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...)
		}
		for i := range images {
			// The native snapshotter unpacks anywhere (overlayfs may not nest in a container).
			ctr("images", "import", "--snapshotter", "native", files[i])
		}
		names := strings.Fields(ctr("images", "ls", "--quiet"))
		list := ctr("images", "ls")
		for _, im := range images {
			md, _ := im.img.Digest()
			if !slices.Contains(names, im.name) {
				t.Errorf("ctr images ls lists %q, want %q", names, im.name)
			}
			found := false
			for _, line := range strings.Split(list, "\n") {
				f := strings.Fields(line)
				found = found || (len(f) > 3 && f[0] == im.name && f[2] == md.String() && strings.Contains(line, "linux/amd64"))
			}
			if !found {
				t.Errorf("ctr images ls has no line naming %s with target %s for linux/amd64", im.name, md)
			}
			// --quiet prints the refs that are complete and unpacked.
			if out := strings.Fields(ctr("images", "check", "--quiet", "--snapshotter", "native", "name=="+im.name)); !slices.Equal(out, []string{im.name}) {
				t.Errorf("ctr images check: %s is not complete and unpacked (%q)", im.name, out)
			}
		}
		if len(names) != len(images) {
			t.Errorf("ctr images ls lists %q, want exactly the %d imported images", names, len(images))
		}
	})
}

// startContainerd runs a containerd of its own (root, state, socket and config in a temporary
// directory, the CRI plugin off), stopped when the test ends, and returns its socket.
func startContainerd(t *testing.T, containerd, ctr string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "imgctl-containerd-") // short: the socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, sock, sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(containerd, "--config", filepath.Join(dir, "config.toml"),
		"--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--address", sock)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", log.String())
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing containerd's directory: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("containerd exited: %v\n%s", err, log.String())
		default:
		}
		if exec.Command(ctr, "--address", sock, "version").Run() == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s within 30s\n%s", sock, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
