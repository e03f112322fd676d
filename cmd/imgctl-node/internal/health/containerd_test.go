package health

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// startContainerd runs a real containerd with its root, state and socket in a temp dir and
// returns the socket once it accepts connections; disable names further plugins to disable. It skips the
// test under -short, without containerd (Debian: apt-get install containerd) or without root.
func startContainerd(t *testing.T, disable ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: starts containerd")
	}
	testenv.Tools(t, "containerd")
	testenv.Root(t, "containerd runs as root")
	bin, _ := exec.LookPath("containerd")
	dir := t.TempDir()
	socket := filepath.Join(dir, "containerd.sock")
	// No /opt/containerd (the opt plugin), no tracing exporter, no CRI TCP service; the CRI
	// streaming server on an ephemeral loopback port; CNI directories that are empty.
	disabled := append([]string{"io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"}, disable...)
	config := fmt.Sprintf(`version = 2
disabled_plugins = ["%s"]
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q
`, strings.Join(disabled, `", "`), filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config", cfgPath, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", socket)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second // then SIGKILL
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("containerd log:\n%s", b)
		}
	})

	// Wait for the socket to accept a request (any HTTP/2 answer will do).
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("containerd exited: %v\n%s", err, b)
		default:
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		tr := unixH2Transport(socket)
		_, err := grpcUnary(rctx, &http.Client{Transport: tr}, "grpc.health.v1.Health/Check", nil)
		tr.CloseIdleConnections()
		rcancel()
		if err == nil || IsCode(err, Unimplemented) {
			return socket
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not serve %s within 20s: %v", socket, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// containerdVersion returns the version `containerd --version` prints (third field).
func containerdVersion(t *testing.T) string {
	out, err := exec.Command("containerd", "--version").Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) < 3 {
		t.Fatalf("containerd --version: %q, %v", out, err)
	}
	return f[2]
}

// TestCRIVersionContainerd asks a real containerd (Debian 12 ships 1.6.20, which serves both
// runtime.v1 and runtime.v1alpha2) for its version.
func TestCRIVersionContainerd(t *testing.T) {
	socket := startContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	info, err := CRIVersion(ctx, "unix://"+socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRIVersion = %+v", info)
	want := CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: containerdVersion(t),
		RuntimeAPIVersion: "v1", API: APIv1}
	if info != want {
		t.Errorf("CRIVersion = %+v; want %+v", info, want)
	}

	// The v1alpha2 service kubelet 1.21 uses, as the fallback would reach it.
	tr := unixH2Transport(socket)
	defer tr.CloseIdleConnections()
	old, err := criVersion(ctx, &http.Client{Transport: tr}, socket, APIv1alpha2)
	t.Logf("v1alpha2 = %+v, %v", old, err)
	if err != nil || old.RuntimeName != "containerd" || old.RuntimeAPIVersion != "v1alpha2" || old.API != APIv1alpha2 {
		t.Errorf("v1alpha2 Version = %+v, %v", old, err)
	}

	// An unknown method gets a real gRPC Unimplemented status.
	_, err = grpcUnary(ctx, &http.Client{Transport: tr}, "runtime.v1.RuntimeService/NoSuchMethod", nil)
	if !IsCode(err, Unimplemented) {
		t.Errorf("unknown method: err = %v; want Unimplemented", err)
	}
}

// TestCRIVersionContainerdWithoutCRI: a containerd whose CRI plugin is disabled (Docker's
// default config.toml does this) answers Unimplemented for both API versions.
func TestCRIVersionContainerdWithoutCRI(t *testing.T) {
	socket := startContainerd(t, "io.containerd.grpc.v1.cri")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := CRIVersion(ctx, socket)
	t.Logf("CRIVersion: %v", err)
	if !IsCode(err, Unimplemented) || !strings.Contains(err.Error(), "CRI plugin enabled?") {
		t.Errorf("err = %v; want Unimplemented with the CRI plugin hint", err)
	}
}
