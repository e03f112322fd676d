package squashfs

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// lateTar is a small root where etc/imgctl/image.json (sorted early) and usr/bin/kubelet
// change between variants, image.json also in length, surrounded by normal files of every
// size class.
func lateTar(t testing.TB, variant int) []byte {
	t.Helper()
	info := bytes.Repeat([]byte(`{"layers":"sha256:0123"}`), 20+variant)
	kubelet := content(uint64(500+variant), 3*bs+777)
	return makeTar(t, []entry{
		dir("etc/"), dir("etc/imgctl/"), dir("usr/"), dir("usr/bin/"), dir("usr/lib/"),
		file("etc/aaa", []byte("before image.json\n")),
		file("etc/imgctl/image.json", info),
		file("etc/passwd", content(1, 900)),
		file("usr/bin/aaa", content(2, 2*bs+5)),
		{name: "usr/bin/kubelet", typ: tar.TypeReg, mode: 0o755, data: kubelet},
		{name: "usr/bin/kubelet-hard", typ: tar.TypeLink, link: "usr/bin/kubelet"},
		file("usr/bin/zzz", content(3, 5000)),
		file("usr/lib/big", content(4, 4*bs+1)),
		file("usr/lib/small", content(5, 300)),
	})
}

var lateSet = map[string]bool{"etc/imgctl/image.json": true, "usr/bin/kubelet": true}

func lateOpts() Options {
	return Options{Workers: 3, Late: func(name string) int {
		if lateSet[name] {
			return 1
		}
		return 0
	}}
}

// inodeTableStart is where an image's data area ends (superblock field inode_table_start).
func inodeTableStart(img []byte) int { return int(binary.LittleEndian.Uint64(img[64:])) }

// commonPrefix is the length of the equal prefix of a and b after the superblock (which
// holds the table offsets).
func commonPrefix(a, b []byte) int {
	n := superSize
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// Two images that differ only in late files' contents share every data byte before the late
// region; in path order they diverge at image.json's fragment block.
func TestLateFilesDataLast(t *testing.T) {
	a, _ := write(t, lateTar(t, 0), lateOpts())
	b, _ := write(t, lateTar(t, 1), lateOpts())

	// The same root with the late files empty: its data area is exactly the normal files'.
	noLate := makeTar(t, []entry{
		dir("etc/"), dir("etc/imgctl/"), dir("usr/"), dir("usr/bin/"), dir("usr/lib/"),
		file("etc/aaa", []byte("before image.json\n")),
		file("etc/imgctl/image.json", nil),
		file("etc/passwd", content(1, 900)),
		file("usr/bin/aaa", content(2, 2*bs+5)),
		{name: "usr/bin/kubelet", typ: tar.TypeReg, mode: 0o755},
		{name: "usr/bin/kubelet-hard", typ: tar.TypeLink, link: "usr/bin/kubelet"},
		file("usr/bin/zzz", content(3, 5000)),
		file("usr/lib/big", content(4, 4*bs+1)),
		file("usr/lib/small", content(5, 300)),
	})
	c, _ := write(t, noLate, lateOpts())
	normalEnd := inodeTableStart(c)
	if normalEnd >= inodeTableStart(a) || normalEnd >= inodeTableStart(b) {
		t.Fatalf("normal data ends at %d, images' data at %d and %d: no late data?", normalEnd, inodeTableStart(a), inodeTableStart(b))
	}
	if got := commonPrefix(a, b); got < normalEnd {
		t.Errorf("images differing in late files differ at byte %d, before the late region at %d", got, normalEnd)
	}
	if !bytes.Equal(a[superSize:normalEnd], c[superSize:normalEnd]) {
		t.Errorf("the normal files' data differs from the image with empty late files")
	}

	// Path order (no Late): the change shows right after etc/aaa.
	pa, _ := write(t, lateTar(t, 0), Options{Workers: 3})
	pb, _ := write(t, lateTar(t, 1), Options{Workers: 3})
	if got := commonPrefix(pa, pb); got >= normalEnd {
		t.Errorf("without Late the images share %d bytes, want fewer than %d (test does not exercise the order)", got, normalEnd)
	}

	// Same inputs, same bytes, whatever the workers.
	one := lateOpts()
	one.Workers = 1
	if a1, _ := write(t, lateTar(t, 0), one); !bytes.Equal(a, a1) {
		t.Error("images with late files differ between 1 and 3 workers")
	}
	testOracle(t, lateTar(t, 0), a)
	testOracle(t, lateTar(t, 1), b)
}

// Late files take part in duplicate detection like the others, both ways: a late file equal
// to an earlier normal one, and a normal file equal to an earlier late one.
func TestLateFilesDeduplicated(t *testing.T) {
	big, small := content(9, 2*bs+17), content(10, 700)
	es := []entry{
		dir("a/"), dir("b/"), dir("c/"),
		file("a/big", big),
		file("a/small", small),
		file("b/late-big", big),     // late, same as a/big
		file("b/late-small", small), // late, same as a/small
		file("b/late-own", content(11, bs+3)),
		file("b/late-own-small", content(12, 50)),
		file("c/big-again", content(11, bs+3)), // normal, same as b/late-own
		file("c/small-again", content(12, 50)), // normal, same as b/late-own-small
		{name: "c/hard", typ: tar.TypeLink, link: "b/late-own"},
	}
	tarball := makeTar(t, es)
	late := func(n string) int {
		if strings.HasPrefix(n, "b/late-") {
			return 1
		}
		return 0
	}
	img, res := write(t, tarball, Options{Workers: 2, Late: late})
	ref, refRes := write(t, tarball, Options{Workers: 2})
	if res.DuplicateFiles != 4 || refRes.DuplicateFiles != 4 {
		t.Errorf("duplicate files: %d with late files, %d without; want 4", res.DuplicateFiles, refRes.DuplicateFiles)
	}
	// The late group starts at a 4 KiB boundary: up to 4095 bytes of padding, no more.
	if got, want := inodeTableStart(img), inodeTableStart(ref); got < want || got >= want+devBlockSize {
		t.Errorf("data area %d bytes with late files, %d without: duplicates stored twice?", got, want)
	}

	testOracle(t, tarball, img)
}

// testOracle checks img with unsquashfs: listing as mksquashfs's, contents as the tar's.
func testOracle(t *testing.T, tarball, img []byte) {
	t.Helper()
	needTools(t, "mksquashfs", "unsquashfs", "tar")
	p := filepath.Join(t.TempDir(), "img.sqfs")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	tree := extract(t, tarball)
	ref := filepath.Join(t.TempDir(), "ref.sqfs")
	run(t, "mksquashfs", tree, ref, "-noappend", "-comp", "zstd", "-quiet", "-no-progress")
	if got, want := listing(t, p), listing(t, ref); got != want {
		t.Errorf("unsquashfs -lln differs from mksquashfs's image:\n%s", lineDiff(want, got))
	}
	out := filepath.Join(t.TempDir(), "out")
	run(t, "unsquashfs", "-q", "-n", "-d", out, p)
	compareTrees(t, tree, out)
}

// Late files wait in a spool file in Options.TempDir, removed when Write returns, also when
// it fails.
func TestLateSpoolRemoved(t *testing.T) {
	dir := t.TempDir()
	opts := lateOpts()
	opts.TempDir = dir
	tarball := lateTar(t, 0)
	write(t, tarball, opts)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("after Write, TempDir holds %v", ents)
	}
	// Cut inside usr/lib/big: the kubelet (earlier) is spooled, then the tar breaks.
	cut := bytes.Index(tarball, []byte("usr/lib/big")) + 5000
	opts.MTime = sde
	if _, err := Write(t.Context(), &memImage{}, bytes.NewReader(tarball[:cut]), opts); err == nil {
		t.Fatal("a truncated tar was accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("after a failed Write, TempDir holds %v", ents)
	}
	opts.TempDir = filepath.Join(dir, "missing")
	_, err := Write(t.Context(), &memImage{}, bytes.NewReader(tarball), opts)
	if err == nil || !strings.Contains(err.Error(), "etc/imgctl/image.json") || !strings.Contains(err.Error(), "missing") {
		t.Errorf("err = %v, want one naming the late file and the spool directory", err)
	}
}

// noise is n incompressible bytes: stored raw, so a test finds its blocks in the image.
func noise(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// groupTar is a root with three late groups' worth of files: group 1 (a kernel: boot/vmlinuz
// and modules) and group 2 (image.json and the kubelet) sort among the normal files. variant
// changes group 1: vmlinuz's content and length and one module's.
func groupTar(t testing.TB, variant int) []byte {
	t.Helper()
	vmlinuz := noise(uint64(70+variant), 2*bs+1234+999*variant)
	return makeTar(t, []entry{
		dir("boot/"), dir("etc/"), dir("etc/imgctl/"), dir("usr/"), dir("usr/bin/"), dir("usr/lib/"), dir("usr/lib/modules/"),
		file("boot/config", content(20, 3000)),
		file("boot/vmlinuz", vmlinuz),
		file("etc/aaa", []byte("normal\n")),
		file("etc/imgctl/image.json", bytes.Repeat([]byte(`{"kernel":"v1"}`), 10+variant)),
		file("etc/passwd", content(21, 900)),
		file("usr/bin/aaa", content(22, 2*bs+5)),
		file("usr/bin/kubelet", noise(23, 3*bs+777)),
		{name: "usr/bin/ping", typ: tar.TypeReg, mode: 0o755, data: content(28, 100), xattrs: map[string]string{"security.capability": capability}},
		file("usr/bin/zzz", content(24, 5000)),
		file("usr/lib/modules/a.ko", content(uint64(25+variant), 7000)),
		file("usr/lib/modules/big.ko", content(26, bs+99)),
		file("usr/lib/zlib", content(27, 3*bs+17)),
	})
}

// groupOf is groupTar's grouping: the kernel's files 1, the kubelet and image.json 2.
func groupOf(name string) int {
	switch {
	case name == "boot/vmlinuz" || name == "boot/config" || strings.HasPrefix(name, "usr/lib/modules/"):
		return 1
	case name == "usr/bin/kubelet" || name == "etc/imgctl/image.json":
		return 2
	}
	return 0
}

// blocksOf is the set of img's 4 KiB blocks at 4 KiB boundaries.
func blocksOf(img []byte) map[[devBlockSize]byte]bool {
	m := map[[devBlockSize]byte]bool{}
	for off := 0; off+devBlockSize <= len(img); off += devBlockSize {
		m[[devBlockSize]byte(img[off:])] = true
	}
	return m
}

// Late groups start at 4 KiB boundaries, in group order after the normal files: a change of
// group 1 (a kernel upgrade) leaves every byte before it as it was and moves group 2 (the
// kubelet) by whole 4 KiB blocks, so each of its blocks is in the old image, at a 4 KiB boundary.
func TestLateGroupsAligned(t *testing.T) {
	opts := Options{Workers: 3, Late: groupOf}
	a, _ := write(t, groupTar(t, 0), opts)
	b, _ := write(t, groupTar(t, 1), opts)

	// Where each group starts: its first file, stored raw (incompressible), is found by content.
	start := func(img []byte, data []byte, what string) int {
		t.Helper()
		at := bytes.Index(img, data[:bs])
		if at < 0 {
			t.Fatalf("%s's first block is not stored raw in the image", what)
		}
		if at%devBlockSize != 0 {
			t.Errorf("%s starts at byte %d, not at a 4 KiB boundary (%d bytes past one)", what, at, at%devBlockSize)
		}
		return at
	}
	kubelet := noise(23, 3*bs+777)
	g1a := start(a, noise(70, 2*bs+1234), "group 1 (boot/vmlinuz)")
	g2a := start(a, kubelet, "group 2 (usr/bin/kubelet) of v1")
	g2b := start(b, kubelet, "group 2 (usr/bin/kubelet) of v2")
	if !(g1a < g2a && g2a < inodeTableStart(a)) {
		t.Errorf("group 1 at %d, group 2 at %d, data end %d: want groups in order, after the normal files", g1a, g2a, inodeTableStart(a))
	}
	if same := commonPrefix(a, b); same < g1a {
		t.Errorf("a change of group 1 changed byte %d, before group 1 at %d", same, g1a)
	}
	// The kubelet's raw blocks: every 4 KiB block of v2 is one of v1's.
	old := blocksOf(a)
	for off := g2b; off < g2b+3*bs; off += devBlockSize {
		if !old[[devBlockSize]byte(b[off:])] {
			t.Errorf("v2's 4 KiB block at %d (group 2, kubelet) is not in v1", off)
			break
		}
	}

	// Same bytes with 1 worker and with a block cache (cold, then warm).
	one := opts
	one.Workers = 1
	if a1, _ := write(t, groupTar(t, 0), one); !bytes.Equal(a, a1) {
		t.Error("images with late groups differ between 1 and 3 workers")
	}
	cached := opts
	cached.Blocks = newMemBlocks()
	for _, pass := range []string{"cold", "warm"} {
		if ac, _ := write(t, groupTar(t, 0), cached); !bytes.Equal(a, ac) {
			t.Errorf("%s block cache: image with late groups differs", pass)
		}
	}
	testOracle(t, groupTar(t, 0), a)
	testOracle(t, groupTar(t, 1), b)
}

// A negative group is refused, naming the file.
func TestLateGroupNegative(t *testing.T) {
	opts := Options{Workers: 2, MTime: sde, Late: func(name string) int {
		if name == "usr/bin/kubelet" {
			return -1
		}
		return 0
	}}
	_, err := Write(t.Context(), &memImage{}, bytes.NewReader(groupTar(t, 0)), opts)
	if err == nil || !strings.Contains(err.Error(), "usr/bin/kubelet") || !strings.Contains(err.Error(), "group -1") {
		t.Errorf("err = %v, want one naming the file and its group", err)
	}
}

// The kernel reads an image with late groups (padding between the groups' data) like any other.
func TestLateGroupsKernelMount(t *testing.T) {
	needTools(t, "mount", "umount", "tar")
	tarball := groupTar(t, 1)
	img := writeImage(t, tarball, Options{Late: groupOf})
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "loop,ro", "--", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer func() { _ = exec.Command("umount", mnt).Run() }()
	compareTrees(t, extract(t, tarball), mnt)
}
