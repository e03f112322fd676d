package initrd

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/kmod/kmodtest"
)

// serverRootfs is rootfs with igb (two dependencies, one spelled with dashes) and ahci built in.
func serverRootfs(t *testing.T) *Kernel {
	t.Helper()
	mods := "usr/lib/modules/" + rel + "/"
	dep := "kernel/fs/squashfs/squashfs.ko:\n" +
		"kernel/fs/overlayfs/overlay.ko:\n" +
		"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n" +
		"kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n" +
		"kernel/drivers/virtio/virtio.ko:\n" +
		"kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n" +
		"kernel/drivers/net/ethernet/intel/igb/igb.ko: kernel/drivers/dca/dca.ko kernel/drivers/i2c/algos/i2c-algo-bit.ko\n" +
		"kernel/drivers/dca/dca.ko:\n" +
		"kernel/drivers/i2c/algos/i2c-algo-bit.ko:\n"
	r := rootfs(t, map[string]string{
		mods + "modules.dep":                                  dep,
		mods + "modules.builtin":                              "kernel/drivers/nvme/host/nvme.ko\nkernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/scsi/virtio_scsi.ko\nkernel/drivers/ata/ahci.ko\n",
		mods + "kernel/drivers/net/ethernet/intel/igb/igb.ko": string(kmodtest.Module("name=igb")),
		mods + "kernel/drivers/dca/dca.ko":                    string(kmodtest.Module("name=dca")),
		mods + "kernel/drivers/i2c/algos/i2c-algo-bit.ko":     string(kmodtest.Module("name=i2c_algo_bit")),
	})
	k, err := Scan(context.Background(), r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// moduleList returns the module list file of a written initrd.
func moduleList(t *testing.T, initrd []byte) string {
	t.Helper()
	list, ok := cpioFiles(t, initrd)[boot.ModuleListPath]
	if !ok {
		t.Fatalf("no %s in the initrd", boot.ModuleListPath)
	}
	return list
}

func TestOptionalModules(t *testing.T) {
	k := serverRootfs(t)
	agent, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	mdir := "lib/modules/" + rel + "/kernel/"
	required := mdir + "drivers/virtio/virtio.ko\n" + mdir + "drivers/virtio/virtio_ring.ko\n" + mdir + "drivers/block/virtio_blk.ko\n" +
		mdir + "fs/squashfs/squashfs.ko\n" + mdir + "fs/overlayfs/overlay.ko\n"
	igb := mdir + "drivers/dca/dca.ko\n" + mdir + "drivers/i2c/algos/i2c-algo-bit.ko\n" + mdir + "drivers/net/ethernet/intel/igb/igb.ko\n"
	for _, tc := range []struct {
		name             string
		optional         []string
		included, absent []string
		list             string // the module list, in load order
	}{
		{"none", nil, nil, nil, required},
		{"present, built in and absent", []string{"igb", "ahci", "ice", "mlx5_core"}, []string{"igb", "ahci"}, []string{"ice", "mlx5_core"}, required + igb},
		// A name already required, repeated, or spelled with dashes is included once, reported once.
		{"repeats and dashes", []string{"virtio-blk", "i2c-algo-bit", "igb", "igb", "ice", "ice"}, []string{"virtio_blk", "i2c_algo_bit", "igb"}, []string{"ice"},
			required + mdir + "drivers/i2c/algos/i2c-algo-bit.ko\n" + mdir + "drivers/dca/dca.ko\n" + mdir + "drivers/net/ethernet/intel/igb/igb.ko\n"},
		{"all absent", []string{"tg3", "bnxt_en"}, nil, []string{"tg3", "bnxt_en"}, required},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			res, err := Write(context.Background(), &buf, k, Options{Agent: agent, Optional: tc.optional, MTime: time.Unix(1700000000, 0)})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Optional, tc.included) || !slices.Equal(res.Absent, tc.absent) {
				t.Errorf("optional included %q, absent %q; want %q, %q", res.Optional, res.Absent, tc.included, tc.absent)
			}
			if got := moduleList(t, buf.Bytes()); got != tc.list {
				t.Errorf("module list =\n%s\nwant\n%s", got, tc.list)
			}
			if want := strings.Count(tc.list, "\n"); len(res.Modules) != want {
				t.Errorf("Result.Modules = %q, want %d files", res.Modules, want)
			}
		})
	}
	// Optional modules never excuse a missing required one.
	_, err = Write(context.Background(), &bytes.Buffer{}, k, Options{Agent: agent, Modules: []string{"xfs"}, Optional: []string{"xfs", "igb"}})
	if err == nil || !strings.Contains(err.Error(), "no module xfs") {
		t.Errorf("missing required module with optional ones: err = %v", err)
	}
	// Without optional modules the initrd is byte for byte what it was before they existed.
	var a, b bytes.Buffer
	if _, err := Write(context.Background(), &a, k, Options{Agent: agent, MTime: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(context.Background(), &b, k, Options{Agent: agent, Optional: []string{}, MTime: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("an empty optional list changed the initrd")
	}
}

// TestModuleLists: the exported lists name the drivers a server needs, each once, as modprobe
// spells them, and no module is in two lists.
func TestModuleLists(t *testing.T) {
	for name, tc := range map[string]struct {
		list []string
		want []string
	}{
		"StorageModules": {StorageModules, []string{"ahci", "nvme", "sd_mod", "megaraid_sas", "mpt3sas", "virtio_blk", "virtio_scsi"}},
		"NICModules":     {NICModules, []string{"virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core", "bnxt_en", "ena", "tg3"}},
	} {
		for _, w := range tc.want {
			if !slices.Contains(tc.list, w) {
				t.Errorf("%s lacks %s: %q", name, w, tc.list)
			}
		}
		seen := map[string]bool{}
		for _, m := range tc.list {
			if seen[m] || m != strings.ReplaceAll(m, "-", "_") || m == "" {
				t.Errorf("%s: %q repeated or not as modprobe names it", name, m)
			}
			seen[m] = true
		}
	}
	for _, m := range NICModules {
		if slices.Contains(StorageModules, m) {
			t.Errorf("%s is in both lists", m)
		}
	}
}

// TestSoftdeps: a module's soft dependencies (modules.softdep, names resolved through
// modules.alias as modprobe does) load with it: Debian's generic kernel has ext4 and jbd2
// "pre: crypto-crc32c", and without crc32c loaded first ext4 cannot mount ("Cannot load crc32c
// driver"). Unresolvable soft dependencies (built in, or not in this kernel) are skipped.
func TestSoftdeps(t *testing.T) {
	mods := "usr/lib/modules/" + rel + "/"
	files := map[string]string{
		mods + "modules.dep": "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n" +
			"kernel/fs/jbd2/jbd2.ko:\n" +
			"kernel/fs/mbcache.ko:\n" +
			"kernel/arch/x86/crypto/crc32c-intel.ko:\n" +
			"kernel/crypto/crc32c_generic.ko:\n" +
			"kernel/fs/squashfs/squashfs.ko:\n" +
			"kernel/drivers/post/after.ko:\n",
		mods + "modules.softdep": "# Soft dependencies extracted from modules themselves.\n" +
			"softdep ext4 pre: crypto-crc32c\n" +
			"softdep jbd2 pre: crypto-crc32c\n" +
			"softdep squashfs pre: nonexistent post: after\n" +
			"softdep cifs gcm\n",
		mods + "modules.alias": "# Aliases extracted from modules themselves.\n" +
			"alias crypto-crc32c crc32c_intel\n" +
			"alias crypto-crc32c crc32c_generic\n" +
			"alias crc32c crc32c_intel\n" +
			"alias pci:v00008086d*sv*sd*bc*sc*i* after\n",
		mods + "modules.builtin": "",
	}
	for _, m := range []string{"fs/ext4/ext4", "fs/jbd2/jbd2", "fs/mbcache", "arch/x86/crypto/crc32c-intel", "crypto/crc32c_generic", "fs/squashfs/squashfs", "drivers/post/after"} {
		files[mods+"kernel/"+m+".ko"] = "MODULE " + m
	}
	for _, m := range []string{"fs/overlayfs/overlay", "drivers/block/virtio_blk", "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/net/ethernet/amazon/ena/ena"} {
		files[mods+"kernel/"+m+".ko"] = ""
	}
	r := rootfs(t, files)
	k, err := Scan(context.Background(), r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Closure([]string{"ext4", "squashfs"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/fs/ext4/ext4.ko",
		"kernel/fs/squashfs/squashfs.ko", "kernel/drivers/post/after.ko"}
	if !slices.Equal(got, want) {
		t.Errorf("closure =\n%q\nwant\n%q", got, want)
	}
}

// cpioFiles returns the regular files of a written initrd by name.
func cpioFiles(t *testing.T, initrd []byte) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	b := raw.Bytes()
	pad4 := func(n int) int { return (n + 3) &^ 3 }
	files := map[string]string{}
	for off := 0; off+110 <= len(b); {
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+nameSize-1])
		if name == "TRAILER!!!" {
			break
		}
		data := off + pad4(110+nameSize)
		if mode&0o170000 == 0o100000 {
			files[name] = string(b[data : data+size])
		}
		off = data + pad4(size)
	}
	return files
}

// TestFirmware: the firmware files the included modules request (modinfo firmware=) go into
// the initrd where the rootfs has them (under lib/firmware or usr/lib/firmware, through
// symlinks), so a NIC that needs firmware comes up before switch-root; the others are reported.
func TestFirmware(t *testing.T) {
	mods := "usr/lib/modules/" + rel + "/"
	r := rootfs(t, map[string]string{
		mods + "modules.dep": "kernel/fs/squashfs/squashfs.ko:\nkernel/fs/overlayfs/overlay.ko:\n" +
			"kernel/drivers/block/virtio_blk.ko:\nkernel/drivers/net/ethernet/amazon/ena/ena.ko:\n" +
			"kernel/drivers/net/ethernet/broadcom/tg3.ko:\n" +
			"kernel/drivers/net/ethernet/intel/ice/ice.ko:\n",
		mods + "kernel/drivers/net/ethernet/broadcom/tg3.ko":  string(kmodtest.Module("firmware=tigon/tg3_tso.bin", "license=GPL", "firmware=tigon/tg3.bin")),
		mods + "kernel/drivers/net/ethernet/intel/ice/ice.ko": string(kmodtest.Module("firmware=intel/ice/ddp/ice.pkg", "firmware=tigon/tg3.bin")),
		"usr/lib/firmware/tigon/tg3.bin":                      "TG3 FIRMWARE",
		"lib/firmware/intel/ice/ddp/ice-1.3.30.0.pkg":         "ICE DDP",
		"lib/firmware/intel/ice/ddp/ice.pkg":                  "-> ice-1.3.30.0.pkg",
		"usr/lib/firmware/unrelated.bin":                      "NOT REQUESTED",
		mods + "kernel/drivers/virtio/virtio_ring.ko":         "",
		mods + "kernel/drivers/virtio/virtio.ko":              "",
	})
	k, err := Scan(context.Background(), r, r.Size())
	if err != nil {
		t.Fatal(err)
	}
	agent, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := Write(context.Background(), &buf, k, Options{Agent: agent, Optional: []string{"tg3", "ice"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"intel/ice/ddp/ice.pkg", "tigon/tg3.bin"}; !slices.Equal(res.Firmware, want) {
		t.Errorf("Result.Firmware = %q, want %q", res.Firmware, want)
	}
	if want := []string{"tigon/tg3_tso.bin"}; !slices.Equal(res.MissingFirmware, want) {
		t.Errorf("Result.MissingFirmware = %q, want %q", res.MissingFirmware, want)
	}
	files := cpioFiles(t, buf.Bytes())
	for name, want := range map[string]string{"lib/firmware/tigon/tg3.bin": "TG3 FIRMWARE", "lib/firmware/intel/ice/ddp/ice.pkg": "ICE DDP"} {
		if files[name] != want {
			t.Errorf("initrd %s = %q, want %q", name, files[name], want)
		}
	}
	for name := range files {
		if strings.Contains(name, "unrelated") || strings.Contains(name, "tg3_tso") {
			t.Errorf("initrd has %s", name)
		}
	}
	// A module file that is not a kernel module fails the build, naming it.
	bad := rootfs(t, map[string]string{mods + "kernel/fs/squashfs/squashfs.ko": "NOT ELF"})
	kb, err := Scan(context.Background(), bad, bad.Size())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(context.Background(), &bytes.Buffer{}, kb, Options{Agent: agent}); err == nil || !strings.Contains(err.Error(), "reading which firmware "+mods+"kernel/fs/squashfs/squashfs.ko requests") {
		t.Errorf("non-ELF module: err = %v", err)
	}
	// Without modules that request firmware, no firmware and the same initrd as before.
	var plain bytes.Buffer
	res, err = Write(context.Background(), &plain, k, Options{Agent: agent})
	if err != nil || res.Firmware != nil || res.MissingFirmware != nil {
		t.Errorf("default modules: firmware %q, missing %q, %v", res.Firmware, res.MissingFirmware, err)
	}
}
