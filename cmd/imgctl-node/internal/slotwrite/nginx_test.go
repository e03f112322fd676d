package slotwrite

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blobs"
	"github.com/imgctl/imgctl/layers/testenv"
)

// nginxBlobsLocation is the README's nginx location ("Upgrading nodes in place") that serves a
// store's OCI layout blobs (STORE/blobs/sha256/HEX) at /blobs/sha256:HEX.
const nginxBlobsLocation = `location ~ "^/blobs/sha256:([0-9a-f]{64})$" { alias STORE/blobs/sha256/$1; }`

// TestWriteFromNginx: a static nginx, configured as the README says, is an update server: the
// node's Range requests get what they ask for, and a kubelet-like change fetches the changed
// blocks only.
func TestWriteFromNginx(t *testing.T) {
	readme, err := os.ReadFile("../../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), nginxBlobsLocation) {
		t.Fatalf("README.md no longer shows the nginx location this test checks: %s", nginxBlobsLocation)
	}
	testenv.Integration(t, "runs nginx")
	testenv.Tools(t, "nginx")
	f := newFixture(t, 400, 100, 140)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(filepath.Join(store, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	for d, b := range f.srv.blobs {
		if err := os.WriteFile(filepath.Join(store, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	url := startNginx(t, dir, strings.ReplaceAll(nginxBlobsLocation, "STORE", store))
	client := &blobs.Client{Server: url, Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		HeaderTimeout: 5 * time.Second, StallTimeout: 5 * time.Second}
	o := f.options(f.im2, f.activeOnVerity)
	o.Blobs = client
	res, err := Write(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !slotHolds(t, f.slot, f.v2) {
		t.Fatal("the slot does not hold v2's root blob")
	}
	if want := int64(40 * BlockSize); res.Fetched < want || res.Fetched > want+int64(len(f.v2))-400*BlockSize {
		t.Errorf("fetched %d bytes from nginx, want the 40 changed blocks (%d) and at most the hash area", res.Fetched, want)
	}
	t.Logf("nginx: fetched %d, reused %d, kept %d bytes", res.Fetched, res.Reused, res.Kept)
}

// startNginx runs nginx on a free loopback port with one server block holding location, in
// the foreground as one process (the test's user reads the files), until the test ends.
func startNginx(t *testing.T, dir, location string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := filepath.Join(dir, "nginx.conf")
	text := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s;
    %[3]s
  }
}
`, dir, addr, location)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "nginx", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	url := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(url + "/")
		if err == nil {
			resp.Body.Close()
			return url
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not answer on %s: %v\n%s\n%s", addr, err, out, log)
		}
	}
}
