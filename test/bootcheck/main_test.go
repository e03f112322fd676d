package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/sparse"
)

func TestFailedStepLine(t *testing.T) {
	log := "x\r\n[  12.3] imgctl-node[140]: imgctl-node step=kubelet-start status=ok latency=1s\r\n" +
		"[ 200.1] imgctl-node[140]: imgctl-node step=kubelet-healthy status=fail latency=3m0s err=\"the kubelet did not answer\"\r\n"
	m := failedStep.FindStringSubmatch(log)
	if m == nil || m[1] != "kubelet-healthy" || !strings.HasSuffix(m[0], `err="the kubelet did not answer"`) {
		t.Errorf("failedStep = %q", m)
	}
	if failedStep.MatchString("imgctl-node step=images status=skip reason=none\n") {
		t.Error("a skipped step counts as failed")
	}
}

// TestCheckRefusesAMissingDisk: a wrong path is a usage error (exit 2) naming the file, before
// anything starts.
func TestCheckRefusesAMissingDisk(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "disk.raw")
	err := check(context.Background(), diskSource{path: missing}, time.Minute, "", 1024)
	if _, ok := err.(*prereqError); !ok || !strings.Contains(err.Error(), missing) {
		t.Fatalf("check(%s) = %v, want a prerequisite error naming the disk", missing, err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("the check created the disk")
	}
}

// TestStoredDiskExpands: -store boots the image's own disk.simg blob, expanded to the raw disk
// it encodes; an image without one, or a name that is not a digest, is refused by name.
func TestStoredDiskExpands(t *testing.T) {
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "in.raw")
	want := make([]byte, 3<<20)
	copy(want[1<<20:], "GPT disk bytes")
	if err := os.WriteFile(raw, want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var simg bytes.Buffer
	if _, err := sparse.Write(context.Background(), &simg, f, int64(len(want))); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) string {
		h := fmt.Sprintf("%x", sha256.Sum256(b))
		if err := os.WriteFile(filepath.Join(blobs, h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "sha256:" + h
	}
	disk := put(simg.Bytes())
	image := put([]byte(`{"layers":[{"digest":"sha256:00","annotations":{"org.opencontainers.image.title":"vmlinuz"}},` +
		`{"digest":"` + disk + `","annotations":{"org.opencontainers.image.title":"disk.simg"}}]}`))
	noDisk := put([]byte(`{"layers":[]}`))

	p, err := storedDisk(dir, image)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "disk.raw")
	if err := expand(context.Background(), p, out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Errorf("expanded disk differs from the raw disk (%d bytes, want %d)", len(got), len(want))
	}
	if _, err := storedDisk(dir, noDisk); err == nil || !strings.Contains(err.Error(), "has no disk.simg") {
		t.Errorf("image without disk.simg: %v", err)
	}
	if _, err := storedDisk(dir, "../../etc/passwd"); err == nil || !strings.Contains(err.Error(), "expected a digest") {
		t.Errorf("not a digest: %v", err)
	}
}
