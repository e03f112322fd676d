package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/testenv"
)

// amiImage is one image built for the AMI test: its digest and version in the store and the
// disk.raw --output exported (the oracle the AMI's bytes are compared with).
type amiImage struct {
	digest, version, disk string
}

// buildAMIImage builds the embedded default spec as target raw into dir's store and cache,
// with the boot test layer and a kubelet stand-in printing kubelet; images built in the same
// dir and work share everything but what the kubelet changes.
func buildAMIImage(ctx context.Context, t *testing.T, work, dir, kubelet string) amiImage {
	t.Helper()
	start := time.Now()
	bin := filepath.Join(work, "kubelet-"+kubelet)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho "+kubelet+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(work, "testlayer")
	if _, err := os.Stat(layer); err != nil {
		layer = testLayer(t, work)
	}
	out := filepath.Join(dir, "out-"+kubelet)
	res, err := imgctl(ctx, t, dir, "-o", "json", "build", "--k8s", "1.21.13", "--target", "raw",
		"--lock", filepath.Join(work, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://"+bin+"#path=/usr/bin/kubelet&mode=0755",
		"--source", "extra=file://"+layer+"/")
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Digest string
		Config struct{ Version string }
	}
	if err := json.Unmarshal([]byte(res), &b); err != nil || b.Digest == "" || b.Config.Version == "" {
		t.Fatalf("imgctl -o json build: %v: %.500s", err, res)
	}
	t.Logf("built %s (%s) in %v", b.Config.Version, b.Digest, time.Since(start).Round(time.Second))
	return amiImage{digest: b.Digest, version: b.Config.Version, disk: filepath.Join(out, "disk.raw")}
}

// TestAMIPublishBoots builds a node image, publishes it as an AMI on moto_server, reads its
// snapshot back block by block with GetSnapshotBlock, checks the reassembled disk is the
// built disk byte for byte and boots it in qemu (OVMF, TCG) to the init's mount-root line.
func TestAMIPublishBoots(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap", "moto_server")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	_, c := motoClients(ctx, t)
	const region = "us-east-1"
	work, dir := t.TempDir(), t.TempDir()

	v1 := buildAMIImage(ctx, t, work, dir, "kubelet-v1")
	snap := uploadDisk(ctx, t, c, region, v1.disk)

	// The bytes in the snapshot: read back block by block, reassembled, the built disk.
	readStart := time.Now()
	chain, err := snapshotChain(ctx, c.EC2(region), snap)
	if err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(work, "ami-disk.raw")
	read, err := reassemble(ctx, readBackEBS(c.EBS(region)), chain, got)
	if err != nil {
		t.Fatal(err)
	}
	if err := diskDiff(got, v1.disk); err != nil {
		t.Fatalf("the disk in the AMI's snapshot is not the built disk: %v", err)
	}
	t.Logf("read back %d snapshot(s), %d blocks, in %v", len(read), blocksRead(read), time.Since(readStart).Round(time.Second))
	bootToMountRoot(ctx, t, work, got)
	t.Logf("TestAMIPublishBoots: %v wall", time.Since(start).Round(time.Second))
}

func blocksRead(r []snapshotBlocks) int {
	n := 0
	for _, s := range r {
		n += len(s.Blocks)
	}
	return n
}

// bootToMountRoot boots disk in qemu (OVMF, TCG, under the watchdog) until the init reports
// the root mounted from ROOT-A, then stops the guest.
func bootToMountRoot(ctx context.Context, t *testing.T, work, disk string) {
	t.Helper()
	vars := filepath.Join(work, "vars.fd")
	copyFile(t, ovmfVars, vars)
	bootCtx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	start := time.Now()
	vm := startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, logFile: filepath.Join(work, "boot.log")})
	err := vm.waitFor(bootCtx, "step=mount-root status=ok")
	log := vm.console.String()
	vm.stop()
	if err != nil {
		t.Fatalf("booting the AMI's disk: %v\nconsole:\n%s", err, tail(log, 6000))
	}
	var line string
	for _, l := range stepLines(log) {
		if strings.Contains(l, "step=mount-root status=ok") {
			line = l
		}
	}
	if !strings.Contains(line, "label=ROOT-A") || !strings.Contains(line, "fstype=squashfs") {
		t.Errorf("mount-root: %q, want the squashfs root from ROOT-A", line)
	}
	t.Logf("the AMI's disk booted to mount-root in %v: %s", time.Since(start).Round(time.Second), line)
}

// uploadDisk writes the non-zero 512 KiB blocks of disk to a new snapshot with the EBS
// direct APIs and returns its ID.
func uploadDisk(ctx context.Context, t *testing.T, c *awsclient.Clients, region, disk string) string {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	e := c.EBS(region)
	s, err := e.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64((fi.Size() + 1<<30 - 1) >> 30)})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, publication.BlockSize)
	zero := make([]byte, publication.BlockSize)
	var n int32
	for i := int32(0); int64(i)*publication.BlockSize < fi.Size(); i++ {
		if _, err := f.ReadAt(buf, int64(i)*publication.BlockSize); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if bytes.Equal(buf, zero) {
			continue
		}
		sum := sha256.Sum256(buf)
		if _, err := e.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: s.SnapshotId, BlockIndex: aws.Int32(i),
			BlockData: bytes.NewReader(buf), DataLength: aws.Int32(publication.BlockSize),
			Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if _, err := e.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: s.SnapshotId, ChangedBlocksCount: aws.Int32(n)}); err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %d blocks to %s", n, aws.ToString(s.SnapshotId))
	return aws.ToString(s.SnapshotId)
}
