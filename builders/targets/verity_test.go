package targets_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/testenv"
)

// rootOf is an image's root as its annotations describe it, and the stored blob's path.
type rootOf struct {
	art      manifest.Artifact
	path     string
	rootHash string
	offset   int64
}

func imageRoot(t *testing.T, e buildtest.Env, res *builders.Result) rootOf {
	t.Helper()
	sq := artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), manifest.RootSquashfsArtifact)
	p, err := e.Opts.Store.BlobPath(sq.Digest)
	if err != nil {
		t.Fatal(err)
	}
	off, err := strconv.ParseInt(sq.Annotations[manifest.AnnotationRootVerityOffset], 10, 64)
	if err != nil {
		t.Fatalf("%s: %v (annotations %v)", manifest.AnnotationRootVerityOffset, err, sq.Annotations)
	}
	return rootOf{art: sq, path: p, rootHash: sq.Annotations[manifest.AnnotationRootVerityRootHash], offset: off}
}

// TestRawRootCarriesVerity: the raw target publishes rootfs.squashfs (the bytes of ROOT-A) with
// its dm-verity parameters; the blob is the squashfs followed by a hash area that checks
// against the annotated root hash; disk.simg carries the same root annotations and slot A's
// command line names the root digest, root hash and offset.
func TestRawRootCarriesVerity(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "raw")
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	r := imageRoot(t, e, res)
	if r.offset <= 0 || r.offset%verity.BlockSize != 0 {
		t.Fatalf("verity offset %d: want a positive multiple of 4096", r.offset)
	}
	if want := r.offset + verity.HashAreaSize(uint64(r.offset/verity.BlockSize)); r.art.Size != want {
		t.Errorf("root blob %d bytes, want squashfs %d + hash area = %d", r.art.Size, r.offset, want)
	}
	if r.art.Annotations[manifest.AnnotationRootDigest] != string(r.art.Digest) || r.art.Annotations[manifest.AnnotationRootSize] != fmt.Sprint(r.art.Size) {
		t.Errorf("rootfs.squashfs annotations = %v", r.art.Annotations)
	}
	rootHash, err := verity.ParseRootHash(r.rootHash)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := verity.ParseHashArea(blob[r.offset:], rootHash, uint64(r.offset/verity.BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	if got := verity.HashBlock(blob[:verity.BlockSize]); got != leaves[0] {
		t.Errorf("leaf 0 %x, the squashfs's first block hashes to %x", leaves[0], got)
	}
	if string(blob[:4]) != "hsqs" {
		t.Errorf("the root blob does not start with a squashfs superblock: %q", blob[:4])
	}

	d := artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), "disk.simg")
	for _, k := range []string{manifest.AnnotationRootDigest, manifest.AnnotationRootSize, manifest.AnnotationRootVerityRootHash, manifest.AnnotationRootVerityOffset} {
		if d.Annotations[k] != r.art.Annotations[k] {
			t.Errorf("disk.simg %s=%q, rootfs.squashfs %q", k, d.Annotations[k], r.art.Annotations[k])
		}
	}
	cmdline := " " + d.Annotations[manifest.AnnotationKernelCmdline] + " "
	for _, p := range []string{
		boot.Param(boot.KeyRootDigest, string(r.art.Digest)),
		boot.Param(boot.KeyVerity, r.rootHash),
		boot.Param(boot.KeyVerityOffset, fmt.Sprint(r.offset)),
	} {
		if !strings.Contains(cmdline, " "+p+" ") {
			t.Errorf("slot A's command line lacks %s: %q", p, cmdline)
		}
	}
	// rootfs.squashfs carries the spec's command line: a node adds its slot's parameters.
	if got := r.art.Annotations[manifest.AnnotationKernelCmdline]; strings.Contains(got, boot.KeyRoot) {
		t.Errorf("rootfs.squashfs's command line %q has slot parameters", got)
	}
	if got := res.Image.Manifest.Annotations[manifest.AnnotationArchitecture]; got != "amd64" || res.Image.Config.Architecture != "amd64" {
		t.Errorf("architecture: manifest %q, config %q; want amd64", got, res.Image.Config.Architecture)
	}

	// A node reads the image from its manifest bytes (images/update): the same root, verity
	// parameters, kernel, initrd, architecture and the spec's command line.
	rc, err := e.Opts.Store.OpenBlob(context.Background(), res.Image.Digest())
	if err != nil {
		t.Fatal(err)
	}
	mj, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	im, err := update.ParseManifest(mj, string(res.Image.Digest()))
	if err != nil {
		t.Fatalf("a node cannot read the raw image's manifest: %v", err)
	}
	k := artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), manifest.KernelArtifact)
	if im.Root != (update.Blob{Digest: string(r.art.Digest), Size: r.art.Size}) || im.VerityRootHash != r.rootHash || im.VerityOffset != r.offset ||
		im.Kernel.Digest != string(k.Digest) || im.Architecture != "amd64" || strings.Join(im.Cmdline, " ") != strings.Join(e.Opts.Spec.Spec.Kernel.Cmdline, " ") {
		t.Errorf("update.ParseManifest = %+v", im)
	}

	// A rebuild takes the root from the cache: the same parameters, read back from its hash area.
	var c stepCounter
	again, err := builders.Run(c.ctx(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.count("compress squashfs") != 0 || c.count("hash root") != 0 {
		t.Errorf("a rebuild compressed or hashed the root again (steps: %q)", c.steps)
	}
	if again.Image.Digest() != res.Image.Digest() {
		t.Errorf("rebuild from the cache gave image %s, first build %s", again.Image.Digest(), res.Image.Digest())
	}
}

// TestRootVerityReproducible: two builds from fresh caches give the same root bytes, root hash
// and disk.
func TestRootVerityReproducible(t *testing.T) {
	f := buildtest.NewFixture(t)
	var roots []rootOf
	var disks []manifest.Artifact
	for range 2 {
		e := bootEnv(t, f, buildtest.BootOptions{}, "raw,pxe")
		res, err := builders.Run(context.Background(), e.Opts)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, imageRoot(t, e, res))
		disks = append(disks, artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), "disk.simg"))
	}
	if roots[0].art.Digest != roots[1].art.Digest || roots[0].rootHash != roots[1].rootHash || disks[0].Digest != disks[1].Digest {
		t.Errorf("two builds differ: root %s / %s, root hash %s / %s, disk %s / %s",
			roots[0].art.Digest, roots[1].art.Digest, roots[0].rootHash, roots[1].rootHash, disks[0].Digest, disks[1].Digest)
	}
}

// TestRootVeritysetupAndUnsquashfs: veritysetup verify accepts the built root with the
// annotated offset and root hash (and refuses it with another root hash), and unsquashfs reads
// the squashfs with the hash area after it (as the netboot init's loop mount does).
func TestRootVeritysetupAndUnsquashfs(t *testing.T) {
	testenv.Integration(t, "veritysetup, unsquashfs")
	testenv.Tools(t, "veritysetup", "unsquashfs")
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "pxe")
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	r := imageRoot(t, e, res)
	// A copy: the store's blobs are read-only.
	dev := filepath.Join(t.TempDir(), "root")
	b, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dev, b, 0o644); err != nil {
		t.Fatal(err)
	}
	verify := func(rootHash string) (string, error) {
		out, err := exec.Command("veritysetup", "verify", "--hash-offset="+fmt.Sprint(r.offset), "--", dev, dev, rootHash).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(r.rootHash); err != nil {
		t.Errorf("veritysetup verify refuses the built root: %v\n%s", err, out)
	}
	other := []byte(r.rootHash)
	other[0] ^= 1
	if out, err := verify(string(other)); err == nil {
		t.Errorf("veritysetup verify accepts another root hash:\n%s", out)
	}
	out, err := exec.Command("unsquashfs", "-lln", dev).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "squashfs-root/etc/imgctl/image.json") {
		t.Errorf("unsquashfs -lln on the root blob: %v\n%s", err, out)
	}
}
