package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pin/tftp/v3"
)

// serveProcess is a running `imgctl serve` whose stderr is collected line by line.
type serveProcess struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	addr chan string
}

var servingRE = regexp.MustCompile(`msg=serving addr=(\S+)`)

func startServe(t *testing.T, dir string, args ...string) *serveProcess {
	t.Helper()
	all := append([]string{"--store", filepath.Join(dir, "store"), "--cache", filepath.Join(dir, "cache"), "serve"}, args...)
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestImgctlProcess$", "--"}, all...)...)
	cmd.Env = append(os.Environ(), "IMGCTL_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProcess{cmd: cmd, addr: make(chan string, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				p.addr <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return p
}

func (p *serveProcess) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// waitLog waits until the log holds want.
func (p *serveProcess) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.logs(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", want, p.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}

// imgctl serve takes the example inventory as it is, answers /healthz and boot requests,
// reloads its inventory on SIGHUP (keeping the old one when the new one is broken), and exits 0
// on SIGTERM.
func TestServeProcess(t *testing.T) {
	dir := t.TempDir()
	inv := filepath.Join(dir, "etc", "inventory.yaml")
	copyFile(t, "../../examples/inventory.yaml", inv, 0o644)
	copyFile(t, "../../examples/inventory-secrets/workers.yaml", filepath.Join(dir, "etc", "inventory-secrets", "workers.yaml"), 0o600)
	tftpDir := filepath.Join(dir, "ipxe")
	copyFile(t, "../../examples/inventory.yaml", filepath.Join(tftpDir, "undionly.kpxe"), 0o644) // any bytes
	p := startServe(t, dir, "--inventory", inv, "--listen", "127.0.0.1:0", "--insecure-secrets", "--tftp", "127.0.0.1:0", "--tftp-dir", tftpDir)
	var addr string
	select {
	case addr = <-p.addr:
	case <-time.After(20 * time.Second):
		t.Fatalf("imgctl serve did not start:\n%s", p.logs())
	}
	// The iPXE binary over TFTP.
	p.waitLog(t, "msg=\"serving TFTP\" addr=")
	tftpAddr := regexp.MustCompile(`msg="serving TFTP" addr=(\S+)`).FindStringSubmatch(p.logs())[1]
	tc, err := tftp.NewClient(tftpAddr)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := tc.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if want, _ := os.ReadFile(filepath.Join(tftpDir, "undionly.kpxe")); !bytes.Equal(got.Bytes(), want) {
		t.Errorf("TFTP undionly.kpxe: %d bytes, want %d", got.Len(), len(want))
	}
	base := "http://" + addr
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/boot.ipxe"); code != 200 || !strings.Contains(body, "chain --autofree "+base+"/ipxe?mac=${netX/mac}") {
		t.Errorf("/boot.ipxe: %d\n%s", code, body)
	}
	// cp-1 of the example; the store's prod channel is empty.
	if _, body := httpGet(t, base+"/ipxe?mac=52:54:00:00:00:01"); !strings.Contains(body, "cannot boot cp-1: its channel prod points to no image yet") {
		t.Errorf("cp-1's script:\n%s", body)
	}
	// node-1 lists its addresses: a request from 127.0.0.1 gets no script of its own.
	if _, body := httpGet(t, base+"/ipxe?mac=52:54:00:12:34:56"); !strings.Contains(body, "cannot boot node-1: this address is not allowed") ||
		strings.Contains(body, "imgctl.credential") {
		t.Errorf("node-1's script asked from outside its addresses:\n%s", body)
	}

	// A broken inventory on SIGHUP: logged with file and line, the previous one stays.
	example, err := os.ReadFile(inv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inv, append(append([]byte{}, example...), []byte("  - name: Bad_Name\n    macs: [zz]\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "inventory not loaded: keeping the previous inventory")
	if !strings.Contains(p.logs(), "file="+inv) || !strings.Contains(p.logs(), "line=") {
		t.Errorf("the reload error names no file and line:\n%s", p.logs())
	}
	if _, body := httpGet(t, base+"/ipxe?mac=52:54:00:12:34:56"); !strings.Contains(body, "node-1") {
		t.Errorf("after a broken reload, node-1 is gone:\n%s", body)
	}
	if _, body := httpGet(t, base+"/metrics"); !strings.Contains(body, "imgctl_serve_inventory_reload_errors_total") ||
		strings.Contains(body, "imgctl_serve_inventory_reload_errors_total 0") {
		t.Errorf("reload errors not counted")
	}
	// A good one: node-1 is renamed.
	renamed := strings.Replace(string(example), "name: node-1", "name: node-one", 1)
	if err := os.WriteFile(inv, []byte(renamed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "inventory reloaded")
	if _, body := httpGet(t, base+"/ipxe?mac=52:54:00:12:34:56"); !strings.Contains(body, "node-one") {
		t.Errorf("after the reload:\n%s", body)
	}

	http.DefaultClient.CloseIdleConnections()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("imgctl serve after SIGTERM: %v\n%s", err, p.logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("imgctl serve did not exit after SIGTERM:\n%s", p.logs())
	}
	if !strings.Contains(p.logs(), "shutting down") {
		t.Errorf("no shutdown line:\n%s", p.logs())
	}
}

func TestServeUsageErrors(t *testing.T) {
	dir := t.TempDir()
	// An inventory naming a channel the store does not have.
	canary := filepath.Join(dir, "etc", "inventory.yaml")
	example, err := os.ReadFile("../../examples/inventory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, "../../examples/inventory-secrets/workers.yaml", filepath.Join(dir, "etc", "inventory-secrets", "workers.yaml"), 0o600)
	if err := os.WriteFile(canary, []byte(strings.Replace(string(example), "channel: prod", "channel: canary", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--listen", ":0"}, "--inventory FILE is required"},
		{[]string{"serve", "--inventory", "x.yaml"}, "--listen ADDR is required"},
		{[]string{"serve", "--inventory", "x.yaml", "--listen", ":0", "--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"serve", "--inventory", filepath.Join(dir, "missing.yaml"), "--listen", "127.0.0.1:0"}, "loading inventory"},
		{[]string{"serve", "--inventory", canary, "--listen", "127.0.0.1:0"}, canary + ":"},
		{[]string{"serve", "--inventory", "../../examples/inventory.yaml", "--listen", "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--tftp-dir", dir}, "holds none of undionly.kpxe"},
		{[]string{"serve", "--inventory", canary, "--listen", "127.0.0.1:0"}, `unknown channel "canary" (expected one of nightly, staging, prod)`},
	} {
		_, _, err := run(t, dir, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

// The server's log batches INFO lines (flushed within logFlushEvery and on Close) and writes
// WARN and worse at once.
func TestBatchedLog(t *testing.T) {
	var out syncBuffer
	b := newBatchedLog(&out)
	log := slog.New(flushAtWarn{Handler: slog.NewTextHandler(b, nil), flush: b.Flush})
	log.Info("boot", "node", "a")
	if out.String() != "" {
		t.Fatalf("an INFO line was written at once: %q", out.String())
	}
	log.Warn("spoofed?", "node", "b")
	if s := out.String(); !strings.Contains(s, "msg=boot") || !strings.Contains(s, "msg=spoofed?") {
		t.Fatalf("a WARN line did not flush the log: %q", s)
	}
	log.Info("boot", "node", "c")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.FlushEvery(ctx, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "node=c") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if !strings.Contains(out.String(), "node=c") {
		t.Fatalf("an INFO line was not flushed by the ticker: %q", out.String())
	}
	log.Info("last", "node", "d")
	b.Close()
	if !strings.Contains(out.String(), "node=d") {
		t.Fatalf("Close did not flush: %q", out.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
