package esp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/testenv"
)

const (
	img  = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	root = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// newTest is an ESP laid out in a temp directory, with free space as statfs reports it.
func newTest(t *testing.T, free uint64) *ESP {
	t.Helper()
	e := New(t.TempDir())
	e.statfs = func(string) (uint64, error) { return free, nil }
	return e
}

func writeEntry(t *testing.T, e *ESP, name string, version int64) {
	t.Helper()
	n, ok := boot.ParseEntryFile(name)
	if !ok {
		t.Fatalf("bad entry name %s", name)
	}
	data := boot.Entry{Slot: n.Slot, Version: version, Cmdline: []string{"console=ttyS0"}}.Marshal()
	if err := e.WriteFile(context.Background(), boot.EntriesDir+"/"+name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func entryFiles(t *testing.T, e *ESP) []string {
	t.Helper()
	ents, err := e.Entries()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range ents {
		names = append(names, x.File)
	}
	return names
}

// listAll is every file under the ESP, temp files included.
func listAll(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteFile(t *testing.T) {
	e := newTest(t, 1<<30)
	ctx := context.Background()
	if err := e.WriteFile(ctx, "imgctl/b/vmlinuz", strings.NewReader("old kernel"), 10); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteFile(ctx, "imgctl/b/vmlinuz", strings.NewReader("new kernel!"), 11); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(e.Dir, "imgctl/b/vmlinuz"))
	if string(got) != "new kernel!" {
		t.Fatalf("got %q", got)
	}
	if files := listAll(t, e.Dir); !slices.Equal(files, []string{"imgctl/b/vmlinuz"}) {
		t.Fatalf("files %v", files)
	}
}

func TestWriteFileFailuresLeaveTheOldFile(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		r    io.Reader
		size int64
		free uint64
		want string
	}{
		{"ESP full", ctx, strings.NewReader("0123456789"), 10, FreeMargin + 9,
			"ESP at DIR is full: 1048585 bytes free, imgctl/b/initrd.img needs 1048586 (10 + 1048576 margin); nothing written"},
		{"short input", ctx, strings.NewReader("01234"), 10, 1 << 30, "write imgctl/b/initrd.img on the ESP: input ended after 5 of 10 bytes"},
		{"long input", ctx, strings.NewReader("0123456789abc"), 10, 1 << 30, "write imgctl/b/initrd.img on the ESP: input is longer than 10 bytes"},
		{"read error", ctx, iotest.ErrReader(errors.New("connection reset")), 10, 1 << 30, "write imgctl/b/initrd.img on the ESP: connection reset"},
		{"cancelled", cancelled, strings.NewReader("0123456789"), 10, 1 << 30, "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTest(t, 1<<30)
			if err := e.WriteFile(ctx, "imgctl/b/initrd.img", strings.NewReader("old"), 3); err != nil {
				t.Fatal(err)
			}
			e.statfs = func(string) (uint64, error) { return tt.free, nil }
			err := e.WriteFile(tt.ctx, "imgctl/b/initrd.img", tt.r, tt.size)
			want := strings.ReplaceAll(tt.want, "DIR", e.Dir)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want %q", err, want)
			}
			if got, _ := os.ReadFile(filepath.Join(e.Dir, "imgctl/b/initrd.img")); string(got) != "old" {
				t.Fatalf("old file now %q", got)
			}
			if files := listAll(t, e.Dir); !slices.Equal(files, []string{"imgctl/b/initrd.img"}) {
				t.Fatalf("files left: %v", files)
			}
		})
	}
}

// TestWriteFileENOSPC fills a real 1 MiB tmpfs (statfs reports its true free space): the
// up-front check refuses a file that cannot fit, and a write that runs out of space anyway
// (statfs faked generous) fails with ENOSPC and leaves no temp file.
func TestWriteFileENOSPC(t *testing.T) {
	testenv.Root(t, "mounts a small tmpfs")
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, 0) })
	e := New(dir)
	big := bytes.Repeat([]byte{'x'}, 2<<20)
	err := e.WriteFile(context.Background(), "imgctl/b/initrd.img", bytes.NewReader(big), int64(len(big)))
	if err == nil || !strings.Contains(err.Error(), "is full") {
		t.Fatalf("error %v, want the up-front refusal", err)
	}
	e.statfs = func(string) (uint64, error) { return 1 << 40, nil }
	err = e.WriteFile(context.Background(), "imgctl/b/initrd.img", bytes.NewReader(big), int64(len(big)))
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("error %v, want ENOSPC", err)
	}
	if files := listAll(t, dir); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

func TestWriteFileRejectsPaths(t *testing.T) {
	e := newTest(t, 1<<30)
	for _, rel := range []string{"", "/etc/passwd", "../x", "imgctl/../../x", "imgctl//b", "imgctl/b/", "-rf", ".tmp-x"} {
		if err := e.WriteFile(context.Background(), rel, strings.NewReader(""), 0); err == nil || !strings.Contains(err.Error(), "expected a relative path of plain names") {
			t.Errorf("%q: error %v", rel, err)
		}
	}
}

func TestEntriesBlessRemoveMaxVersion(t *testing.T) {
	e := newTest(t, 1<<30)
	if v, err := e.MaxVersion(); err != nil || v != 0 {
		t.Fatalf("empty ESP: MaxVersion %d, %v", v, err)
	}
	writeEntry(t, e, "imgctl-a.conf", 1700000000)
	writeEntry(t, e, "imgctl-b+2-1.conf", 1700000001)
	if err := os.WriteFile(filepath.Join(e.Dir, boot.EntriesDir, "other.conf"), []byte("title x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := entryFiles(t, e); !slices.Equal(got, []string{"imgctl-a.conf", "imgctl-b+2-1.conf"}) {
		t.Fatalf("entries %v", got)
	}
	if v, err := e.MaxVersion(); err != nil || v != 1700000001 {
		t.Fatalf("MaxVersion %d, %v", v, err)
	}

	name, blessed, err := e.Bless(boot.SlotB)
	if err != nil || !blessed || name != "imgctl-b.conf" {
		t.Fatalf("Bless b = %q %v %v", name, blessed, err)
	}
	if got := entryFiles(t, e); !slices.Equal(got, []string{"imgctl-a.conf", "imgctl-b.conf"}) {
		t.Fatalf("entries after bless %v", got)
	}
	ent, err := e.ReadEntry("imgctl-b.conf")
	if err != nil || ent.Version != 1700000001 || ent.Slot != boot.SlotB {
		t.Fatalf("blessed entry %+v %v", ent, err)
	}
	if name, blessed, err := e.Bless(boot.SlotB); err != nil || blessed || name != "imgctl-b.conf" {
		t.Fatalf("second Bless = %q %v %v (want no-op)", name, blessed, err)
	}
	if _, blessed, err := e.Bless(boot.SlotA); err != nil || blessed {
		t.Fatalf("Bless of a blessed slot: %v %v", blessed, err)
	}

	if err := e.RemoveSlotEntries(boot.SlotA); err != nil {
		t.Fatal(err)
	}
	if got := entryFiles(t, e); !slices.Equal(got, []string{"imgctl-b.conf"}) {
		t.Fatalf("entries after remove %v", got)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, boot.EntriesDir, "other.conf")); err != nil {
		t.Fatalf("foreign entry touched: %v", err)
	}
}

func TestBlessTwoCountingEntries(t *testing.T) {
	e := newTest(t, 1<<30)
	writeEntry(t, e, "imgctl-b+3.conf", 2)
	writeEntry(t, e, "imgctl-b+1-2.conf", 1)
	if _, _, err := e.Bless(boot.SlotB); err == nil || !strings.Contains(err.Error(), "slot b has 2 counting entries (expected one)") {
		t.Fatalf("error %v", err)
	}
}

func TestMaxVersionBadEntry(t *testing.T) {
	e := newTest(t, 1<<30)
	writeEntry(t, e, "imgctl-a.conf", 5)
	p := filepath.Join(e.Dir, boot.EntriesDir, "imgctl-b+3.conf")
	if err := os.WriteFile(p, []byte("title x\nversion x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.MaxVersion(); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v, want one naming %s", err, p)
	}
}

func TestSlotImage(t *testing.T) {
	e := newTest(t, 1<<30)
	ctx := context.Background()
	if _, ok, err := e.ReadSlotImage(boot.SlotA); ok || err != nil {
		t.Fatalf("fresh slot A: ok=%v err=%v", ok, err)
	}
	want := SlotImage{Image: img, Root: root, Version: "v2"}
	if err := e.WriteSlotImage(ctx, boot.SlotB, want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := e.ReadSlotImage(boot.SlotB)
	if err != nil || !ok || got != want {
		t.Fatalf("got %+v %v %v", got, ok, err)
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "imgctl/b/image.json")); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteSlotImage(ctx, boot.SlotB, SlotImage{Image: "latest", Root: root}); err == nil || !strings.Contains(err.Error(), `slot b image.json: image "latest": expected sha256:HEX`) {
		t.Fatalf("error %v", err)
	}
	bad := filepath.Join(e.Dir, "imgctl/a/image.json")
	_ = os.MkdirAll(filepath.Dir(bad), 0o700)
	if err := os.WriteFile(bad, []byte(`{"image":"`+img+`","root":"`+root+`","extra":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.ReadSlotImage(boot.SlotA); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("error %v, want one naming %s", err, bad)
	}
}

func TestCleanTemps(t *testing.T) {
	e := newTest(t, 1<<30)
	writeEntry(t, e, "imgctl-a.conf", 1)
	for _, p := range []string{"loader/entries/.tmp-imgctl-b+3.conf-123", "imgctl/b/.tmp-vmlinuz-9", "imgctl/a/initrd.img"} {
		full := filepath.Join(e.Dir, p)
		_ = os.MkdirAll(filepath.Dir(full), 0o700)
		if err := os.WriteFile(full, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.CleanTemps(); err != nil {
		t.Fatal(err)
	}
	if files := listAll(t, e.Dir); !slices.Equal(files, []string{"imgctl/a/initrd.img", "loader/entries/imgctl-a.conf"}) {
		t.Fatalf("files %v", files)
	}
}

// fakeSys lays out sysfs as the kernel does: /sys/class/block/NAME links to the device's
// directory, a partition's under its disk's (blockdev derives the parent disk from it).
func fakeSys(t *testing.T, uevents map[string]string) blockdev.Sys {
	t.Helper()
	sys := t.TempDir()
	class := filepath.Join(sys, "class", "block")
	if err := os.MkdirAll(class, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, ue := range uevents {
		disk := strings.TrimRight(name, "0123456789")
		dir := filepath.Join(sys, "devices", "virtio0", "block", disk)
		if disk != name {
			dir = filepath.Join(dir, name)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte(ue), 0o644); err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(class, dir)
		if err := os.Symlink(rel, filepath.Join(class, name)); err != nil {
			t.Fatal(err)
		}
	}
	return blockdev.Sys{SysDir: sys, DevDir: t.TempDir()}
}

func part(name, label, uuid string, n int) string {
	return "MAJOR=253\nMINOR=" + string(rune('0'+n)) + "\nDEVNAME=" + name + "\nDEVTYPE=partition\nPARTN=" + string(rune('0'+n)) +
		"\nPARTNAME=" + label + "\nPARTUUID=" + uuid + "\n"
}

const (
	uuidA  = "0a0a0a0a-0000-4000-8000-00000000000a"
	uuidB  = "0b0b0b0b-0000-4000-8000-00000000000b"
	uuidA2 = "0c0c0c0c-0000-4000-8000-00000000000c"
)

func TestLocate(t *testing.T) {
	disk := "MAJOR=253\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"
	sys := fakeSys(t, map[string]string{
		"vda": disk, "vda1": part("vda1", "ESP", "0e0e0e0e-0000-4000-8000-00000000000e", 1),
		"vda2": part("vda2", "ROOT-A", uuidA, 2), "vda3": part("vda3", "ROOT-B", uuidB, 3),
		"vda4": part("vda4", "STATE", "0f0f0f0f-0000-4000-8000-00000000000f", 4),
		// A second disk with its own ESP: not the one holding the root.
		"vdb": strings.ReplaceAll(disk, "vda", "vdb"), "vdb1": part("vdb1", "ESP", "1e1e1e1e-0000-4000-8000-00000000000e", 1),
		"vdb2": part("vdb2", "ROOT-A", uuidA2, 2),
	})
	loc, err := Locate(sys, cmdline.Device{Kind: cmdline.PartUUID, Value: uuidB})
	if err != nil {
		t.Fatal(err)
	}
	if loc.Slot != boot.SlotB || loc.Root.Name != "vda3" || loc.ESP.Name != "vda1" {
		t.Fatalf("got %+v", loc)
	}
	if _, err := Locate(sys, cmdline.Device{Kind: cmdline.PartLabel, Value: "STATE"}); err == nil ||
		!strings.Contains(err.Error(), `not an A/B disk node: root PARTLABEL=STATE is vda4 labelled "STATE" (expected ROOT-A or ROOT-B)`) || !errors.Is(err, ErrNotAB) {
		t.Fatalf("error %v", err)
	}
	if _, err := Locate(sys, cmdline.Device{}); !errors.Is(err, ErrNotAB) || !strings.Contains(err.Error(), "no imgctl.root= device") {
		t.Fatalf("error %v", err)
	}
}
