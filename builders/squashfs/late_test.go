package squashfs

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"os"
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
	return Options{Workers: 3, Late: func(name string) bool { return lateSet[name] }}
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
	late := func(n string) bool { return len(n) > 7 && n[:7] == "b/late-" }
	img, res := write(t, tarball, Options{Workers: 2, Late: late})
	ref, refRes := write(t, tarball, Options{Workers: 2})
	if res.DuplicateFiles != 4 || refRes.DuplicateFiles != 4 {
		t.Errorf("duplicate files: %d with late files, %d without; want 4", res.DuplicateFiles, refRes.DuplicateFiles)
	}
	if inodeTableStart(img) != inodeTableStart(ref) {
		t.Errorf("data area %d bytes with late files, %d without: duplicates stored twice?", inodeTableStart(img), inodeTableStart(ref))
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
