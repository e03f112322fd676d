package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/layers/testenv"
)

// verityRoot pads the squashfs at sqfs to 4 KiB and appends its dm-verity hash area
// (package verity, as the builder does); veritysetup verifies the result. It returns the
// image's path, the root hash and the hash offset.
func verityRoot(ctx context.Context, t *testing.T, sqfs string) (img, rootHash string, offset int64) {
	t.Helper()
	data := readFile(t, sqfs)
	offset = (int64(len(data)) + verity.BlockSize - 1) &^ (verity.BlockSize - 1)
	data = append(data, make([]byte, offset-int64(len(data)))...)
	tree, err := verity.Build(ctx, bytes.NewReader(data), offset)
	if err != nil {
		t.Fatal(err)
	}
	img = sqfs + ".verity"
	if err := os.WriteFile(img, append(data, tree.HashArea()...), 0o644); err != nil {
		t.Fatal(err)
	}
	rootHash = tree.RootHashHex()
	run(ctx, t, "", "veritysetup", "verify", "--hash-offset="+strconv.FormatInt(offset, 10), "--", img, img, rootHash)
	return img, rootHash, offset
}

// TestBootQEMUVerity boots a root whose squashfs carries a veritysetup hash tree: the init
// maps it through dm-verity with its own ioctls and mounts /dev/dm-0; then a flipped byte in
// the squashfs's first block fails the root's read with EIO and the failure line says verity
// with the target's status C.
func TestBootQEMUVerity(t *testing.T) {
	if testing.Short() {
		t.Skip("boots qemu: skipped under -short")
	}
	testenv.Tools(t, "qemu-system-x86_64", "sgdisk", "mksquashfs", "depmod", "modprobe", "dpkg-deb", "ldd", "veritysetup")
	ctx := context.Background()
	dir := t.TempDir()
	k := kernel(ctx, t, dir)
	initrd := buildInitrd(ctx, t, dir, k)
	var rootHash string
	var offset int64
	disk := buildDiskWith(ctx, t, dir, func(sqfs string) string {
		var img string
		img, rootHash, offset = verityRoot(ctx, t, sqfs)
		return img
	})
	line := "console=ttyS0 panic=-1 imgctl.root=PARTLABEL=ROOT-A imgctl.state=PARTLABEL=STATE imgctl.verity=" + rootHash +
		" imgctl.verity-offset=" + strconv.FormatInt(offset, 10)
	blocks := strconv.FormatInt(offset/4096, 10)

	t.Run("verified root", func(t *testing.T) {
		out := boot(ctx, t, k.vmlinuz, initrd, disk, line)
		requireLine(t, out, "step=verity status=ok", "roothash="+rootHash[:12], "blocks="+blocks, "mapped=/dev/dm-0", "device=/dev/vda2")
		requireLine(t, out, "step=mount-root status=ok", "device=/dev/dm-0", "label=ROOT-A", "fstype=squashfs")
		requireStep(t, out, "verity-marker", "ok")
		requireStep(t, out, "switch-root", "ok")
		requireLine(t, out, "IMGCTL-TEST-INIT-REACHED", "root-ro=true", "lower-src=/dev/dm-0", "verity-marker=true", "var-writable=true")
	})

	t.Run("flipped byte fails the read", func(t *testing.T) {
		first, _ := partition(ctx, t, disk, 2)
		f, err := os.OpenFile(disk, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		at := first*512 + 100 // inside the squashfs superblock: the first block the init reads
		if _, err := f.ReadAt(b, at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x01
		if _, err := f.WriteAt(b, at); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		out := boot(ctx, t, k.vmlinuz, initrd, disk, line)
		requireStep(t, out, "verity", "ok") // the table maps; the tree is checked on read
		requireLine(t, out, "step=mount-root status=fail", "input/output error")
		requireLine(t, out, "step=verity status=fail", "dm-status=C", "roothash="+rootHash[:12], "failed dm-verity verification")
		requireLine(t, out, "imgctl-node: rebooting")
		if strings.Contains(out, "IMGCTL-TEST-INIT-REACHED") {
			t.Errorf("booted a modified root:\n%s", out)
		}
	})

	t.Run("bad offset names the superblock", func(t *testing.T) {
		out := boot(ctx, t, k.vmlinuz, initrd, disk, strings.Replace(line, "imgctl.verity-offset="+strconv.FormatInt(offset, 10), "imgctl.verity-offset=4096", 1))
		requireLine(t, out, "step=verity status=fail", "at imgctl.verity-offset=4096: verity superblock: signature")
	})

	t.Run("root hash of another image", func(t *testing.T) {
		other := strings.Replace(line, rootHash, strings.Repeat("0", 64), 1)
		out := boot(ctx, t, k.vmlinuz, initrd, disk, other)
		requireLine(t, out, "step=verity status=fail", "verity superblock: UUID")
		if strings.Contains(out, "step=mount-root") {
			t.Errorf("mounted a root whose superblock names another root hash:\n%s", out)
		}
	})
}
