package loopdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/layers/testenv"
)

// TestAttachMountsSquashfs attaches a squashfs file read-only and mounts it, as the init
// does with the downloaded root.
func TestAttachMountsSquashfs(t *testing.T) {
	testenv.Integration(t, "loop device and squashfs mount")
	testenv.Root(t, "attaches a loop device and mounts it")
	testenv.Tools(t, "mksquashfs")
	testenv.Files(t, "/dev/loop-control")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("from the network root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.squashfs")
	if out, err := exec.Command("mksquashfs", src, img, "-quiet", "-noappend").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	d, err := Attach(img, "/dev")
	if err != nil {
		t.Fatal(err)
	}
	dev := d.Name()
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Errorf("Attach = %q", dev)
	}
	name := filepath.Base(dev)
	ro, err := os.ReadFile("/sys/block/" + name + "/ro")
	if err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s read-only = %q, %v", dev, ro, err)
	}
	back, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file")
	if err != nil || strings.TrimSpace(string(back)) != img {
		t.Errorf("%s backing file = %q, %v", dev, back, err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, "squashfs", unix.MS_RDONLY, ""); err != nil {
		d.Close()
		t.Fatalf("mount %s: %v", dev, err)
	}
	d.Close() // the mount keeps the device
	b, err := os.ReadFile(filepath.Join(mnt, "hello"))
	if uerr := unix.Unmount(mnt, 0); uerr != nil {
		t.Errorf("unmount: %v", uerr)
	}
	if err != nil || string(b) != "from the network root\n" {
		t.Errorf("read through the loop device: %q, %v", b, err)
	}
	// Autoclear: unmounted and closed, the device lets go of the file.
	if back, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file"); err == nil && strings.TrimSpace(string(back)) == img {
		t.Errorf("%s still holds %s after unmount", dev, img)
	}
}

func TestAttachMissingFile(t *testing.T) {
	_, err := Attach(filepath.Join(t.TempDir(), "nope"), "/dev")
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("err = %v", err)
	}
}
