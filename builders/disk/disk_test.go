package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/testenv"
	"golang.org/x/sys/unix"
)

// pseudo returns n deterministic pseudo-random bytes, with a zero run in the middle when n is
// large, so sparse writing is exercised on real content.
func pseudo(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if n > 3*MiB {
		clear(b[MiB : 2*MiB+100])
	}
	return b
}

type testESP struct {
	files   []File
	content map[string][]byte
}

func newTestESP() testESP {
	e := testESP{content: map[string][]byte{}}
	add := func(p string, b []byte) {
		e.content[p] = b
		e.files = append(e.files, File{Path: p, Size: int64(len(b)), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
	}
	add("EFI/BOOT/BOOTX64.EFI", pseudo(1, 3*MiB/2+17))
	add("EFI/systemd/systemd-bootx64.efi", pseudo(2, 90_000))
	add("EFI/Linux/imgctl-1.21.13-6.1.0-20261126.1-a-very-long-unified-kernel-image-name.efi", pseudo(3, 4*MiB+3))
	add("loader/loader.conf", []byte("timeout 3\ndefault imgctl-a*\n"))
	add("loader/entries/imgctl-a+3.conf", []byte("title imgctl A\nlinux /vmlinuz-a\ninitrd /initrd-a\noptions root=PARTLABEL=ROOT-A ro\n"))
	add("loader/entries/imgctl-b+3.conf", []byte("title imgctl B\nlinux /vmlinuz-b\ninitrd /initrd-b\noptions root=PARTLABEL=ROOT-B ro\n"))
	add("loader/random-seed", nil)
	add("vmlinuz-a", pseudo(4, 700_001))
	add("EFI/Linux/ünïcode €.txt", []byte("non-ASCII long names are UTF-16 in FAT\n"))
	// Enough entries to make loader/entries span several 512-byte clusters.
	for i := range 30 {
		add(fmt.Sprintf("loader/entries/extra entry %02d.conf", i), []byte(strings.Repeat("x", i)))
	}
	return e
}

func testOptions(seed string) Options {
	return Options{
		DiskSize:     256 * MiB,
		ESPSize:      64 * MiB,
		RootSize:     48 * MiB,
		MinStateSize: 16 * MiB,
		Seed:         []byte(seed),
		MTime:        time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC),
	}
}

// writeTestDisk writes a disk with the test ESP and a root image file; it returns the disk's
// path, its layout and the root image's bytes.
func writeTestDisk(t *testing.T, dir, seed string) (string, Layout, []byte) {
	return writeTestDiskFrom(t, dir, seed, true)
}

// writeTestDiskFrom reads the root image from a file (copy_file_range) or, with viaFile
// false, from memory (the read/write fallback).
func writeTestDiskFrom(t *testing.T, dir, seed string, viaFile bool) (string, Layout, []byte) {
	t.Helper()
	root := pseudo(99, 5*MiB+123)
	rootPath := filepath.Join(dir, "root.img")
	if err := os.WriteFile(rootPath, root, 0o644); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	opts := testOptions(seed)
	l, err := Plan(opts, int64(len(root)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "disk.raw")
	var ra io.ReaderAt = rf
	if !viaFile {
		ra = bytes.NewReader(root)
	}
	if err := Write(t.Context(), path, l, newTestESP().files, ra, int64(len(root)), opts); err != nil {
		t.Fatal(err)
	}
	return path, l, root
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	testenv.Tools(t, tools...)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("%s stderr: %s", name, stderr.String())
	}
	return stdout.String()
}

func TestWriteOracles(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: runs sgdisk, fsck.fat and mtools")
	}
	need(t, "sgdisk", "fsck.fat", "mdir", "mtype")
	dir := t.TempDir()
	path, l, root := writeTestDisk(t, dir, "sha256:feedface")
	esp, _ := l.Find(boot.LabelESP)

	t.Run("sgdisk", func(t *testing.T) {
		out := run(t, "sgdisk", "-v", path)
		if !strings.Contains(out, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", out)
		}
		out = run(t, "sgdisk", "-p", path)
		t.Logf("sgdisk -p:\n%s", out)
		if !strings.Contains(out, "Disk identifier (GUID): "+strings.ToUpper(l.DiskGUID)) {
			t.Errorf("disk GUID %s not in:\n%s", l.DiskGUID, out)
		}
		for _, p := range l.Partitions {
			// "   1            2048          133119   64.0 MiB    EF00  ESP"
			want := fmt.Sprintf("%d %d %d", p.Index, p.Start/512, (p.Start+p.Size)/512-1)
			found := false
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 7 && strings.Join(f[:3], " ") == want && f[len(f)-1] == p.Name {
					found = true
				}
			}
			if !found {
				t.Errorf("partition %s (%s) not in sgdisk -p", p.Name, want)
			}
			info := run(t, "sgdisk", "-i", strconv.Itoa(p.Index), path)
			if !strings.Contains(info, "Partition GUID code: "+strings.ToUpper(p.Type)) ||
				!strings.Contains(info, "Partition unique GUID: "+strings.ToUpper(p.GUID)) ||
				!strings.Contains(info, "Attribute flags: 0000000000000000") ||
				!strings.Contains(info, "Partition name: '"+p.Name+"'") {
				t.Errorf("sgdisk -i %d:\n%s", p.Index, info)
			}
		}
	})

	t.Run("partx", func(t *testing.T) {
		need(t, "partx")
		out := run(t, "partx", "--bytes", "--raw", "--noheadings", "--output", "NR,START,SECTORS,NAME,UUID,TYPE", path)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(l.Partitions) {
			t.Fatalf("partx:\n%s", out)
		}
		for i, p := range l.Partitions {
			want := fmt.Sprintf("%d %d %d %s %s %s", p.Index, p.Start/512, p.Size/512, p.Name, p.GUID, p.Type)
			if lines[i] != want {
				t.Errorf("partx: %q, want %q", lines[i], want)
			}
		}
	})

	t.Run("sfdisk", func(t *testing.T) {
		need(t, "sfdisk")
		out := run(t, "sfdisk", "--json", path)
		var v struct {
			PartitionTable struct {
				Label      string `json:"label"`
				ID         string `json:"id"`
				SectorSize int    `json:"sectorsize"`
				Partitions []struct {
					Start int64  `json:"start"`
					Size  int64  `json:"size"`
					Type  string `json:"type"`
					UUID  string `json:"uuid"`
					Name  string `json:"name"`
				} `json:"partitions"`
			} `json:"partitiontable"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		pt := v.PartitionTable
		if pt.Label != "gpt" || !strings.EqualFold(pt.ID, l.DiskGUID) || len(pt.Partitions) != len(l.Partitions) {
			t.Fatalf("sfdisk --json:\n%s", out)
		}
		for i, p := range l.Partitions {
			g := pt.Partitions[i]
			if g.Start != p.Start/512 || g.Size != p.Size/512 || !strings.EqualFold(g.Type, p.Type) ||
				!strings.EqualFold(g.UUID, p.GUID) || g.Name != p.Name {
				t.Errorf("sfdisk partition %d = %+v, want %+v", i+1, g, p)
			}
		}
	})

	t.Run("fsck.fat", func(t *testing.T) {
		espPath := filepath.Join(dir, "esp.img")
		extract(t, path, espPath, esp.Start, esp.Size)
		cmd := exec.Command("fsck.fat", "-n", "-v", espPath)
		out, err := cmd.CombinedOutput()
		t.Logf("fsck.fat -n -v:\n%s", out)
		if err != nil {
			t.Fatalf("fsck.fat -n: %v", err)
		}
		for _, bad := range []string{"differ", "wrong", "Dirty", "broken", "Free cluster summary", "bad", "should"} {
			if strings.Contains(string(out), bad) {
				t.Errorf("fsck.fat reports %q", bad)
			}
		}
		// Every line after the boot sector dump is one of the checks' titles, then the summary:
		// anything else is a finding. (fsck.fat counts directories and the volume label as files.)
		_, checks, ok := strings.Cut(string(out), " sectors total\n")
		if !ok {
			t.Fatal("no boot sector dump")
		}
		for _, line := range strings.Split(strings.TrimSpace(checks), "\n") {
			if !strings.HasPrefix(line, "Checking") && !strings.HasPrefix(line, espPath+": ") {
				t.Errorf("fsck.fat finding: %s", line)
			}
		}
		if want := fmt.Sprintf("%s: %d files,", espPath, len(newTestESP().files)+7); !strings.Contains(string(out), want) {
			t.Errorf("fsck.fat summary lacks %q", want)
		}
	})

	t.Run("mtools", func(t *testing.T) {
		img := fmt.Sprintf("%s@@%d", path, esp.Start)
		listing := run(t, "mdir", "-/", "-b", "-i", img, "::/")
		for p := range newTestESP().content {
			if !strings.Contains(listing, "::/"+p+"\n") {
				t.Errorf("mdir -/ -b lacks %s:\n%s", p, listing)
			}
		}
		long := run(t, "mdir", "-i", img, "::/loader/entries")
		if !strings.Contains(long, "IMGCTL~1 CON") || !strings.Contains(long, "imgctl-a+3.conf") || !strings.Contains(long, "2023-11-14  22:13") {
			t.Errorf("mdir ::/loader/entries:\n%s", long)
		}
		if label := run(t, "mlabel", "-s", "-i", img, "::"); !strings.Contains(label, "ESP") {
			t.Errorf("mlabel -s: %s", label)
		}
		for p, want := range newTestESP().content {
			cmd := exec.Command("mtype", "-i", img, "::/"+p)
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("mtype %s: %v", p, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("mtype %s: %d bytes differ from the %d written", p, len(got), len(want))
			}
		}
	})

	t.Run("partitions", func(t *testing.T) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ra, _ := l.Find(boot.LabelRootA)
		got := make([]byte, ra.Size)
		if _, err := f.ReadAt(got, ra.Start); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(root)], root) {
			t.Error("ROOT-A differs from the root image")
		}
		if !allZero(got[len(root):]) {
			t.Error("ROOT-A past the root image is not zero")
		}
		for _, name := range []string{boot.LabelRootB, boot.LabelState} {
			p, _ := l.Find(name)
			if !allZero(readRange(t, f, p.Start, p.Size)) {
				t.Errorf("%s is not zero", name)
			}
		}
		// ROOT-B and STATE are holes: the next data after ROOT-B's start is the backup GPT.
		rb, _ := l.Find(boot.LabelRootB)
		next, err := unix.Seek(int(f.Fd()), rb.Start, unix.SEEK_DATA)
		if err != nil {
			t.Fatalf("SEEK_DATA: %v", err)
		}
		if next < l.DiskSize-MiB {
			t.Errorf("data at %d, inside ROOT-B/STATE", next)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		alloc := st.Blocks * 512
		t.Logf("disk %d bytes, %d allocated (root image %d)", l.DiskSize, alloc, len(root))
		if alloc > 16*MiB {
			t.Errorf("%d bytes allocated: the image is not sparse", alloc)
		}
	})
}

func extract(t *testing.T, from, to string, off, n int64) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, off, n)); err != nil {
		t.Fatal(err)
	}
}

func readRange(t *testing.T, f *os.File, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func allZero(b []byte) bool {
	for len(b) > 0 {
		k := min(len(b), len(zeroSector))
		if !bytes.Equal(b[:k], zeroSector[:k]) {
			return false
		}
		b = b[k:]
	}
	return true
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestWriteDeterministic(t *testing.T) {
	p1, l1, _ := writeTestDisk(t, t.TempDir(), "sha256:aaaa")
	p2, l2, _ := writeTestDisk(t, t.TempDir(), "sha256:aaaa")
	p3, l3, _ := writeTestDisk(t, t.TempDir(), "sha256:bbbb")
	p4, _, _ := writeTestDiskFrom(t, t.TempDir(), "sha256:aaaa", false)
	h1, h2, h3, h4 := fileSHA(t, p1), fileSHA(t, p2), fileSHA(t, p3), fileSHA(t, p4)
	if h1 != h2 {
		t.Errorf("same inputs, different disks: %s %s", h1, h2)
	}
	if h1 != h4 {
		t.Errorf("copy_file_range and the read/write fallback differ: %s %s", h1, h4)
	}
	if h1 == h3 {
		t.Error("different seeds, same disk")
	}
	if l1.DiskGUID != l2.DiskGUID || l1.DiskGUID == l3.DiskGUID {
		t.Error("disk GUIDs do not follow the seed")
	}
	for i := range l1.Partitions {
		if l1.Partitions[i].GUID == l3.Partitions[i].GUID {
			t.Errorf("%s: same GUID for different seeds", l1.Partitions[i].Name)
		}
	}
	// The FAT volume ID follows the seed too (boot sector offset 67).
	esp, _ := l1.Find(boot.LabelESP)
	id := func(p string) []byte {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return readRange(t, f, esp.Start+67, 4)
	}
	if bytes.Equal(id(p1), id(p3)) || !bytes.Equal(id(p1), id(p2)) {
		t.Error("FAT volume ID does not follow the seed")
	}
}

// TestWriteDefaults writes a default-sized (3 GiB) disk, which stays sparse, and whose ESP
// passes fsck.fat: with the default ESP (512-byte clusters), the smallest FAT32 ESP, and one
// large enough for 4 KiB clusters.
func TestWriteDefaults(t *testing.T) {
	for _, esp := range []int64{0, fatMinSize(), 300 * MiB} {
		t.Run(strconv.FormatInt(esp/MiB, 10), func(t *testing.T) { testWriteDefaults(t, esp) })
	}
}

func testWriteDefaults(t *testing.T, espSize int64) {
	dir := t.TempDir()
	opts := Options{Seed: []byte("sha256:defaults"), ESPSize: espSize}
	l, err := Plan(opts, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "disk.raw")
	if err := Write(t.Context(), path, l, newTestESP().files, nil, 0, opts); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 3*GiB || st.Blocks*512 > 16*MiB {
		t.Errorf("size %d, allocated %d", st.Size, st.Blocks*512)
	}
	if testing.Short() {
		return
	}
	need(t, "fsck.fat", "sgdisk")
	if out := run(t, "sgdisk", "-v", path); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	esp, _ := l.Find(boot.LabelESP)
	espPath := filepath.Join(dir, "esp.img")
	extract(t, path, espPath, esp.Start, esp.Size)
	out, err := exec.Command("fsck.fat", "-n", espPath).CombinedOutput()
	if err != nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 1 {
		t.Errorf("fsck.fat -n: %v\n%s", err, out)
	}
}

// cancelReader cancels its context once it has been read from, as if the user pressed ^C
// in the middle of the copy.
type cancelReader struct {
	r      io.ReaderAt
	cancel context.CancelFunc
}

func (c cancelReader) ReadAt(p []byte, off int64) (int, error) {
	c.cancel()
	return c.r.ReadAt(p, off)
}

func TestWriteFailures(t *testing.T) {
	opts := testOptions("sha256:fail")
	root := pseudo(7, 10*MiB)
	l, err := Plan(opts, int64(len(root)))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		esp     func(cancel context.CancelFunc) []File
		root    func(cancel context.CancelFunc) io.ReaderAt
		rootLen int64
		seed    string
		wantErr error
		wantMsg string
	}{
		{
			name:    "cancelled during ROOT-A",
			root:    func(cancel context.CancelFunc) io.ReaderAt { return cancelReader{bytes.NewReader(root), cancel} },
			wantErr: context.Canceled,
		},
		{
			name: "cancelled during an ESP file",
			esp: func(cancel context.CancelFunc) []File {
				return append(newTestESP().files, File{Path: "EFI/big", Size: 9 * MiB, Open: func() (io.ReadCloser, error) {
					return io.NopCloser(io.NewSectionReader(cancelReader{bytes.NewReader(root), cancel}, 0, 9*MiB)), nil
				}})
			},
			wantErr: context.Canceled,
		},
		{
			name: "ESP file fails to open",
			esp: func(context.CancelFunc) []File {
				return append(newTestESP().files, File{Path: "EFI/x", Size: 1, Open: func() (io.ReadCloser, error) { return nil, boom }})
			},
			wantErr: boom,
		},
		{
			name: "ESP file shorter than declared",
			esp: func(context.CancelFunc) []File {
				return []File{{Path: "a", Size: 10, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("abc")), nil }}}
			},
			wantErr: errShort,
		},
		{
			name: "ESP file longer than declared",
			esp: func(context.CancelFunc) []File {
				return []File{{Path: "a", Size: 2, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("abc")), nil }}}
			},
			wantMsg: "longer than its declared 2 bytes",
		},
		{
			name:    "root image shorter than declared",
			root:    func(context.CancelFunc) io.ReaderAt { return bytes.NewReader(root[:100]) },
			wantErr: errShort,
		},
		{
			name:    "root image too big",
			rootLen: 48*MiB + 1,
			wantMsg: "root image is 48.0 MiB (50331649 bytes) but ROOT-A is 48 MiB",
		},
		{
			name: "ESP content does not fit",
			esp: func(context.CancelFunc) []File {
				return []File{{Path: "huge", Size: 63 * MiB, Open: func() (io.ReadCloser, error) { return nil, boom }}}
			},
			wantMsg: "ESP content needs 63.0 MiB (66060800 bytes) but the 64 MiB ESP holds 63.0 MiB (66056192 bytes): raise --esp-size",
		},
		{
			name: "case-insensitive duplicate",
			esp: func(context.CancelFunc) []File {
				open := func() (io.ReadCloser, error) { return nil, boom }
				return []File{{Path: "EFI/a", Open: open}, {Path: "efi/b", Open: open}}
			},
			wantMsg: `directory "EFI" is also spelled "efi"`,
		},
		{
			name:    "layout planned with another seed",
			seed:    "sha256:other",
			wantMsg: "was not planned with this Options.Seed",
		},
		{
			name: "bad path",
			esp: func(context.CancelFunc) []File {
				return []File{{Path: "/EFI/a", Open: func() (io.ReadCloser, error) { return nil, boom }}}
			},
			wantMsg: "empty path component",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "disk.raw")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			esp := newTestESP().files
			if tc.esp != nil {
				esp = tc.esp(cancel)
			}
			var ra io.ReaderAt = bytes.NewReader(root)
			if tc.root != nil {
				ra = tc.root(cancel)
			}
			n := int64(len(root))
			if tc.rootLen != 0 {
				n = tc.rootLen
			}
			o := opts
			if tc.seed != "" {
				o.Seed = []byte(tc.seed)
			}
			err := Write(ctx, path, l, esp, ra, n, o)
			switch {
			case err == nil:
				t.Fatal("no error")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			case tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg):
				t.Errorf("err = %v, want %q", err, tc.wantMsg)
			}
			t.Logf("error: %v", err)
			left, _ := os.ReadDir(dir)
			for _, e := range left {
				t.Errorf("left behind: %s", e.Name())
			}
		})
	}
}
