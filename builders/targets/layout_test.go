package targets_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/spec"
)

// noiseBytes is n incompressible bytes: the squashfs stores them raw, a test finds them by content.
func noiseBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// kernelVariant writes a copy of the kernel layer tar at src with a vmlinuz of size bytes
// (content from seed) and a config file, as a kernel upgrade changes the layer.
func kernelVariant(t *testing.T, src, dst string, seed uint64, size int) {
	t.Helper()
	in, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(in)), tar.NewWriter(&out)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(hdr.Name, "./boot/vmlinuz-") {
			data = append([]byte("MZ fake kernel image "), noiseBytes(seed, size)...)
			hdr.Size = int64(len(data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	cfg := noiseBytes(seed+100, 3000+int(seed))
	tw.WriteHeader(&tar.Header{Name: "./boot/config-" + buildtest.KernelRelease, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(cfg))})
	tw.Write(cfg)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestKernelChangeKeepsOtherBlocks: the kernel layer's files are stored after the other files
// and before the kubelet's, each group from a 4 KiB boundary, so a kernel-only change leaves
// the data of the files after the kernel's in path order (usr/share/noise) where it was and
// moves the kubelet's by whole blocks: a node updating in place copies every 4 KiB block of
// both from its running root (update.PlanBlocks over the roots' dm-verity leaves) instead of
// fetching it.
func TestKernelChangeKeepsOtherBlocks(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "pxe")
	kubelet := noiseBytes(1, 600_000) // 4 full squashfs blocks stored raw and a tail
	dir := filepath.Join(f.Dir, "kubelet-noise")
	os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "usr/bin/kubelet"), kubelet, 0o755); err != nil {
		t.Fatal(err)
	}
	f.Sources[spec.RoleKubelet] = []string{"file://" + dir + "/"}
	other := noiseBytes(4, 600_000) // a file of the extra layer, after the kernel's in path order
	extra := strings.TrimPrefix(f.Sources[spec.RoleExtra][0], "file://")
	os.MkdirAll(filepath.Join(extra, "usr/share"), 0o755)
	if err := os.WriteFile(filepath.Join(extra, "usr/share/noise"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	type root struct {
		blob   []byte
		leaves [][32]byte
	}
	build := func(kernel string) root {
		t.Helper()
		f.Sources[spec.RoleKernel] = []string{"file://" + kernel}
		e.Opts.Spec = f.Spec(t)
		res, err := builders.Run(context.Background(), e.Opts)
		if err != nil {
			t.Fatal(err)
		}
		r := imageRoot(t, e, res)
		blob, err := os.ReadFile(r.path)
		if err != nil {
			t.Fatal(err)
		}
		rootHash, err := verity.ParseRootHash(r.rootHash)
		if err != nil {
			t.Fatal(err)
		}
		leaves, err := verity.ParseHashArea(blob[r.offset:], rootHash, uint64(r.offset/verity.BlockSize))
		if err != nil {
			t.Fatal(err)
		}
		return root{blob[:r.offset], leaves}
	}
	kernel1 := filepath.Join(f.Dir, "kernel-v1.tar")
	kernel2 := filepath.Join(f.Dir, "kernel-v2.tar")
	kernelVariant(t, filepath.Join(f.Dir, "kernel.tar"), kernel1, 1, 300_000)
	kernelVariant(t, filepath.Join(f.Dir, "kernel.tar"), kernel2, 2, 310_007)
	v1, v2 := build(kernel1), build(kernel2)

	plan := update.PlanBlocks(v2.leaves, nil, v1.leaves)
	for _, file := range []struct {
		name string
		data []byte
	}{{"usr/bin/kubelet", kubelet}, {"usr/share/noise", other}} {
		at := bytes.Index(v2.blob, file.data[:128<<10])
		if at < 0 {
			t.Fatalf("the first block of %s is not stored raw in v2's root", file.name)
		}
		// The 4 KiB blocks wholly inside its 4 raw squashfs blocks.
		first, end := uint64((at+verity.BlockSize-1)/verity.BlockSize), uint64((at+4*128<<10)/verity.BlockSize)
		for _, op := range plan.Ops {
			if op.Kind == update.Fetch && op.Dst < end && op.Dst+op.Count > first {
				t.Errorf("an update from v1 to v2 fetches blocks %d..%d, data of %s (blocks %d..%d, from byte %d of v2) that v1 holds",
					op.Dst, op.Dst+op.Count-1, file.name, first, end-1, at)
				break
			}
		}
	}
	t.Logf("kernel change: %d of %d blocks fetched, %d copied", plan.Fetch, plan.Blocks, plan.Copy)
}
