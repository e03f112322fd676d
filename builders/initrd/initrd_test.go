package initrd

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/kmod/kmodtest"
	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/klauspost/compress/gzip"
)

const rel = "6.1.0-50-cloud-amd64"

// rootfs builds a small merged-/usr rootfs tar with a kernel and fake modules; extra adds
// files (a body "-> TARGET" is a symlink) or removes them ("").
func rootfs(t *testing.T, extra map[string]string) *bytes.Reader {
	t.Helper()
	files := map[string]string{
		"boot/vmlinuz-" + rel: "KERNEL",
		"usr/lib/modules/" + rel + "/modules.dep": "kernel/fs/squashfs/squashfs.ko:\n" +
			"kernel/fs/overlayfs/overlay.ko:\n" +
			"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n" +
			"kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n" +
			"kernel/drivers/virtio/virtio.ko:\n" +
			"kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n",
		"usr/lib/modules/" + rel + "/modules.builtin": "kernel/drivers/nvme/host/nvme.ko\nkernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/scsi/virtio_scsi.ko\n",
	}
	for _, m := range []string{"fs/squashfs/squashfs", "fs/overlayfs/overlay", "drivers/block/virtio_blk", "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/net/ethernet/amazon/ena/ena"} {
		files["usr/lib/modules/"+rel+"/kernel/"+m+".ko"] = string(kmodtest.Module("name=" + path.Base(m)))
	}
	for k, v := range extra {
		if v == "" {
			delete(files, k)
		} else {
			files[k] = v
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if target, ok := strings.CutPrefix(body, "-> "); ok { // a symlink
			tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
			continue
		}
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	return bytes.NewReader(buf.Bytes())
}

func TestClosureOrder(t *testing.T) {
	r := rootfs(t, nil)
	k, err := Scan(context.Background(), r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Closure([]string{"virtio-blk", "nvme", "squashfs", "virtio_blk"})
	if err != nil {
		t.Fatal(err)
	}
	want := "kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/block/virtio_blk.ko kernel/fs/squashfs/squashfs.ko"
	if strings.Join(got, " ") != want {
		t.Errorf("closure = %v\nwant %s", got, want)
	}
	if _, err := k.Closure([]string{"xfs"}); err == nil || !strings.Contains(err.Error(), "no module xfs") {
		t.Errorf("missing module: err = %v", err)
	}
	if b, _ := readAll(k.Vmlinuz()); string(b) != "KERNEL" {
		t.Errorf("vmlinuz = %q", b)
	}
}

func readAll(r interface{ Read([]byte) (int, error) }) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}

func TestScanErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		extra map[string]string
		want  string
	}{
		"no kernel":   {map[string]string{"boot/vmlinuz-" + rel: "", "usr/lib/modules/" + rel + "/modules.dep": "", "usr/lib/modules/" + rel + "/modules.builtin": ""}, "is there a kernel layer"},
		"no vmlinuz":  {map[string]string{"boot/vmlinuz-" + rel: ""}, "no boot/vmlinuz-" + rel},
		"no indexes":  {map[string]string{"usr/lib/modules/" + rel + "/modules.dep": ""}, "modules.dep is missing"},
		"two kernels": {map[string]string{"usr/lib/modules/5.10.0-1-amd64/kernel/x.ko": "x"}, "two kernels"},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "no kernel" {
				tc.extra = map[string]string{}
				r := func() *bytes.Reader {
					var buf bytes.Buffer
					tw := tar.NewWriter(&buf)
					tw.WriteHeader(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Size: 1})
					tw.Write([]byte("x"))
					tw.Close()
					return bytes.NewReader(buf.Bytes())
				}()
				if _, err := Scan(context.Background(), r, r.Size()); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			r := rootfs(t, tc.extra)
			if _, err := Scan(context.Background(), r, r.Size()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestWriteIsReproducibleCpio(t *testing.T) {
	r := rootfs(t, nil)
	k, err := Scan(context.Background(), r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	agent, err := os.Executable() // any ELF binary stands in for imgctl-node here
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Agent: agent, MTime: time.Unix(1700000000, 0)}
	var a, b bytes.Buffer
	res, err := Write(context.Background(), &a, k, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(context.Background(), &b, k, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two initrds from the same input differ")
	}
	if len(res.Modules) != 5 {
		t.Errorf("modules = %v", res.Modules)
	}
	testenv.Tools(t, "cpio")
	zr, err := gzip.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = zr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio cannot read our archive: %v", err)
	}
	listing := string(out)
	for _, want := range []string{" init\n", "dev/console", "lib/modules/" + rel + "/kernel/fs/squashfs/squashfs.ko", boot.ModuleListPath} {
		if !strings.Contains(listing, want) {
			t.Errorf("initrd lacks %s:\n%s", want, listing)
		}
	}
	if !strings.Contains(listing, "crw-------") {
		t.Errorf("dev/console is not a character device:\n%s", listing)
	}
	if _, err := Write(context.Background(), &b, k, Options{Agent: "/etc/hostname"}); err == nil {
		t.Error("a non-ELF agent was accepted")
	}
}
