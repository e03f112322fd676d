package bootinit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/fetch"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/netup"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/netup/netuptest"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/layers/testenv"
	"golang.org/x/sys/unix"
)

func TestRefuseUnverifiedRoot(t *testing.T) {
	cfg, err := cmdline.Parse("console=ttyS0 imgctl.root=http://10.0.2.2/rootfs.squashfs")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := refuseUnverified(steplog.New(&out), cfg); err == nil {
		t.Fatal("a root URL without a digest was accepted")
	}
	want := `step=fetch-root status=fail latency=0ms url=http://10.0.2.2/rootfs.squashfs err="no digest for http://10.0.2.2/rootfs.squashfs: an unverified root never boots`
	if !strings.Contains(out.String(), want) {
		t.Errorf("step line %q, want %q", out.String(), want)
	}
}

// fetchServer serves data; the first response is cut off halfway when drop is set.
func fetchServer(t *testing.T, data []byte, drop bool) string {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 && drop {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "root", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s.URL
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestFetchRootStepLines(t *testing.T) {
	data := bytes.Repeat([]byte("squashfs root "), 100000)
	opts := func(t *testing.T) fetch.Options {
		return fetch.Options{Dest: filepath.Join(t.TempDir(), "root.img"), Backoff: time.Millisecond,
			Available: func() (int64, error) { return 1 << 30, nil }}
	}
	t.Run("resumed", func(t *testing.T) {
		url := fetchServer(t, data, true) + "/blobs/" + digest(data)
		cfg, err := cmdline.Parse("imgctl.root=" + url)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		o := opts(t)
		if err := fetchRoot(context.Background(), steplog.New(&out), cfg, o); err != nil {
			t.Fatal(err)
		}
		line := out.String()
		t.Log(line)
		for _, want := range []string{"step=fetch-root status=ok", "url=" + url, "bytes=" + strconv.Itoa(len(data)), "mb-per-s=", "attempts=2", "resumed-from=", "digest=" + digest(data)} {
			if !strings.Contains(line, want) {
				t.Errorf("step line %q lacks %q", line, want)
			}
		}
		if b, err := os.ReadFile(o.Dest); err != nil || !bytes.Equal(b, data) {
			t.Errorf("image: %v", err)
		}
	})
	t.Run("corrupted", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[12345] ^= 0x20
		url := fetchServer(t, bad, false) + "/blobs/" + digest(data)
		cfg, err := cmdline.Parse("imgctl.root=" + url)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		o := opts(t)
		if err := fetchRoot(context.Background(), steplog.New(&out), cfg, o); err == nil {
			t.Fatal("a corrupted root was accepted")
		}
		line := out.String()
		t.Log(line)
		for _, want := range []string{"step=fetch-root status=fail", "attempts=1", "digest mismatch: want " + digest(data) + ", got " + digest(bad)} {
			if !strings.Contains(line, want) {
				t.Errorf("step line %q lacks %q", line, want)
			}
		}
		if _, err := os.Stat(o.Dest); err == nil {
			t.Error("the corrupted image was left for mounting")
		}
	})
}

// TestNetRootInNetns runs the whole network root path but the mounts of the real root: the
// node's namespace gets its address by DHCP over a veth pair, downloads a squashfs from an
// HTTP server on the other side (the first response is cut off halfway: Range resume), into
// a tmpfs, verifies it, attaches it to a loop device, and the image mounts and reads.
func TestNetRootInNetns(t *testing.T) {
	p := netuptest.NewPair(t)
	testenv.Tools(t, "mksquashfs")
	testenv.Files(t, "/dev/loop-control")
	netuptest.ServeDHCP(t, p)

	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sbin", "init"), bytes.Repeat([]byte("#!/bin/sh\n"), 50000), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.squashfs")
	if out, err := exec.Command("mksquashfs", src, img, "-quiet", "-noappend", "-noI", "-noD").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	l := netuptest.ListenIn(t, p.Srv, "10.77.0.1:8080")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "root", time.Time{}, bytes.NewReader(data))
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })

	bootif := "01-" + strings.ReplaceAll(p.NodeMAC.String(), ":", "-")
	url := "http://10.77.0.1:8080/blobs/" + digest(data)
	cfg, err := cmdline.Parse("console=ttyS0 imgctl.root=" + url + " BOOTIF=" + bootif + " ip=dhcp")
	if err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(dir, "ram")
	t.Cleanup(func() { _ = unix.Unmount(ram, unix.MNT_DETACH) })
	env := netEnv{
		RAMDir: ram,
		Net:    netup.Options{ResolvConf: filepath.Join(dir, "resolv.conf"), LinkTimeout: 5 * time.Second, DHCPTimeout: 5 * time.Second, DHCPWait: 300 * time.Millisecond},
		Fetch: fetch.Options{Backoff: 10 * time.Millisecond,
			Client: &http.Client{Transport: &http.Transport{DialContext: netuptest.DialContextIn(p.Node)}}},
	}
	var ups int
	env.Up = func() { ups++ }
	var out bytes.Buffer
	var loop *os.File
	var image string
	netuptest.In(t, p.Node, func() { loop, image, err = netRoot(context.Background(), steplog.New(&out), cfg, env) })
	if ups != 1 {
		t.Errorf("netRoot called Up %d times, want once (the boot report needs the network)", ups)
	}
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	err = unix.Mount(loop.Name(), mnt, "squashfs", unix.MS_RDONLY, "")
	loop.Close()
	if err != nil {
		t.Fatalf("mount %s: %v", loop.Name(), err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "sbin", "init"))
	_ = unix.Unmount(mnt, 0)
	if err != nil || len(got) != 500000 {
		t.Errorf("read the root through the loop device: %d bytes, %v", len(got), err)
	}
	if image != filepath.Join(ram, "root.img") {
		t.Errorf("image at %s", image)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(ram, &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Errorf("%s is not a tmpfs: %v", ram, err)
	}
	log := out.String()
	for _, want := range []string{
		"step=link status=ok", "picked-by=bootif",
		"step=dhcp status=ok", "addr=10.77.0.50/24",
		"step=fetch-root status=ok", "bytes=" + strconv.Itoa(len(data)), "attempts=2", "resumed-from=", "digest=" + digest(data),
		"step=attach-root status=ok", "device=/dev/loop",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("step lines lack %q", want)
		}
	}
}
