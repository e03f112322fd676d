package squashfs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
	"golang.org/x/sys/unix"
)

const sde = 1700000000

// entry is one synthetic tar entry; the tar is written in name order, which
// puts parents before children like the canonical rootfs.
type entry struct {
	name     string // without "./"; directories end with "/"
	typ      byte
	mode     int64
	uid, gid int
	data     []byte
	link     string
	major    int64
	minor    int64
	xattrs   map[string]string
}

func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name string, b []byte) entry {
	return entry{name: name, typ: tar.TypeReg, mode: 0o644, data: b}
}

func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(h *tar.Header, data []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	write(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(sde, 0), Format: tar.FormatPAX}, nil)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Devmajor: e.major, Devminor: e.minor,
			ModTime: time.Unix(sde, 0), Format: tar.FormatPAX,
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		write(h, e.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// content returns n bytes that compress somewhat, seeded for repeatability.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	words := []string{"squash ", "kubelet ", "node ", "image ", "\x00\x01", "etc "}
	for i := 0; i < n; {
		if r.IntN(4) == 0 {
			b[i] = byte(r.Uint32())
			i++
			continue
		}
		i += copy(b[i:], words[r.IntN(len(words))])
	}
	return b
}

const bs = 128 << 10

// capability is a valid v2 security.capability value (cap_net_raw+ep).
var capability = string([]byte{0, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func cases() map[string][]entry {
	sizes := []entry{dir("s/")}
	for _, n := range []int{0, 1, bs - 1, bs, bs + 1, 5 << 20} {
		sizes = append(sizes, file(fmt.Sprintf("s/f%d", n), content(uint64(n), n)))
	}
	sparse := make([]byte, 3*bs+100)
	copy(sparse[bs:], content(7, bs))
	sizes = append(sizes, file("s/sparse", sparse), file("s/zeros", make([]byte, 2*bs)))

	big := []entry{dir("big/")}
	for i := range 10000 {
		big = append(big, file(fmt.Sprintf("big/entry-%05d-%s", i, strings.Repeat("x", i%40)), content(uint64(i), i%300)))
	}

	return map[string][]entry{
		"types": {
			dir("etc/"), dir("empty/"), dir("dev/"),
			{name: "etc/passwd", typ: tar.TypeReg, mode: 0o600, uid: 0, gid: 42, data: []byte("root:x:0:0\n")},
			{name: "etc/suid", typ: tar.TypeReg, mode: 0o4755, uid: 1000, gid: 1000, data: []byte("#!/bin/sh\n")},
			{name: "etc/sticky/", typ: tar.TypeDir, mode: 0o1777, uid: 7, gid: 8},
			{name: "etc/sgid/", typ: tar.TypeDir, mode: 0o2750, uid: 65534, gid: 65534},
			{name: "etc/link", typ: tar.TypeSymlink, mode: 0o777, link: "passwd"},
			{name: "etc/dangling", typ: tar.TypeSymlink, mode: 0o777, link: "/nonexistent/" + strings.Repeat("p", 200)},
			{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
			{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, gid: 6, major: 8, minor: 0},
			{name: "dev/big", typ: tar.TypeBlock, mode: 0o600, major: 259, minor: 70000},
			{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o644},
		},
		"sizes": sizes,
		"links": {
			dir("a/"), dir("b/"),
			file("a/one", content(1, 3*bs+5)),
			file("a/two", content(1, 3*bs+5)), // duplicate of a/one
			file("a/small", []byte("small")),
			file("b/small-dup", []byte("small")),
			{name: "b/hard", typ: tar.TypeLink, link: "a/one"},
			{name: "b/hard2", typ: tar.TypeLink, link: "a/one"},
			{name: "a/sym", typ: tar.TypeSymlink, mode: 0o777, link: "one"},
			{name: "b/symhard", typ: tar.TypeLink, link: "a/sym"},
			{name: "a/fifo", typ: tar.TypeFifo, mode: 0o600},
			{name: "b/fifohard", typ: tar.TypeLink, link: "a/fifo"},
		},
		"xattrs": {
			{name: "x/", typ: tar.TypeDir, mode: 0o755, xattrs: map[string]string{"user.dir": "d"}},
			{name: "x/ping", typ: tar.TypeReg, mode: 0o755, data: content(3, 5000),
				xattrs: map[string]string{"security.capability": capability}},
			{name: "x/ping2", typ: tar.TypeReg, mode: 0o755, data: content(4, 5000),
				xattrs: map[string]string{"security.capability": capability}},
			{name: "x/multi", typ: tar.TypeReg, mode: 0o644, data: []byte("m"),
				xattrs: map[string]string{"user.a": "1", "user.b": strings.Repeat("v", 3000), "trusted.t": "x"}},
			{name: "x/zz-hardlink", typ: tar.TypeLink, link: "x/multi"},
		},
		"bigdir": big,
	}
}

func writeImage(t testing.TB, tarball []byte, opts Options) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.sqfs")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if opts.MTime == 0 {
		opts.MTime = sde
	}
	res, err := Write(context.Background(), f, bytes.NewReader(tarball), opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != res.Size || res.Size%4096 != 0 {
		t.Fatalf("file size %d, Result.Size %d (want equal, multiple of 4096)", st.Size(), res.Size)
	}
	checkSuperblock(t, p, res)
	return p
}

func checkSuperblock(t testing.TB, p string, res Result) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if le.Uint32(b) != 0x73717368 || le.Uint16(b[28:]) != 4 {
		t.Fatalf("bad magic/version")
	}
	if got := int(le.Uint32(b[4:])); got != res.Inodes {
		t.Errorf("superblock inodes %d, Result %d", got, res.Inodes)
	}
	used := le.Uint64(b[40:])
	if int64(used) > res.Size || res.Size-int64(used) >= 4096 {
		t.Errorf("bytes_used %d vs size %d", used, res.Size)
	}
	if !bytes.Equal(b[used:], make([]byte, len(b)-int(used))) {
		t.Errorf("padding is not zero")
	}
}

func TestCompressors(t *testing.T) {
	got := strings.Join(Compressors(), ",")
	if got != "gzip,lz4,xz,zstd" {
		t.Fatalf("Compressors() = %s", got)
	}
}

func TestBadOptions(t *testing.T) {
	tarball := makeTar(t, nil)
	for _, o := range []Options{
		{Compression: "lzo"},
		{BlockSize: 3000},
		{BlockSize: 2 << 20},
		{Compression: "gzip", Level: 10},
	} {
		_, err := Write(context.Background(), &memImage{}, bytes.NewReader(tarball), o)
		if err == nil {
			t.Errorf("%+v: no error", o)
		}
		if o.Compression == "lzo" && (err == nil || !strings.Contains(err.Error(), "gzip, lz4, xz, zstd")) {
			t.Errorf("unknown compressor error does not list supported ones: %v", err)
		}
	}
}

func TestBadInput(t *testing.T) {
	for name, tarball := range map[string][]byte{
		"hardlink to missing": makeTar(t, []entry{{name: "a", typ: tar.TypeLink, link: "missing"}}),
		"hardlink to later":   makeTar(t, []entry{{name: "a", typ: tar.TypeLink, link: "b"}, file("b", nil)}),
		"missing parent":      makeTar(t, []entry{file("nodir/f", []byte("x"))}),
		"truncated":           makeTar(t, []entry{file("f", content(1, 3*bs))})[:2*bs],
		"duplicate":           makeTar(t, []entry{file("f", nil), file("f", nil)}),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Write(context.Background(), &memImage{}, bytes.NewReader(tarball), Options{Workers: 2})
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
		})
	}
}

func TestCancel(t *testing.T) {
	tarball := makeTar(t, cases()["sizes"])
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Write(ctx, &memImage{}, bytes.NewReader(tarball), Options{Workers: 2}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// Cancel in the middle of a large file.
	ctx, cancel = context.WithCancel(context.Background())
	r := &cancelAfter{r: bytes.NewReader(tarball), n: 2 << 20, cancel: cancel}
	if _, err := Write(ctx, &memImage{}, r, Options{Workers: 2}); !errors.Is(err, context.Canceled) {
		t.Fatalf("mid-stream: err = %v, want context.Canceled", err)
	}
}

type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n < 0 {
		c.cancel()
	}
	return n, err
}

func TestDeterministic(t *testing.T) {
	var all []entry
	for name, es := range cases() {
		if name == "bigdir" {
			continue
		}
		for _, e := range es {
			e.name = name + "/" + e.name
			if e.typ == tar.TypeLink {
				e.link = name + "/" + e.link
			}
			all = append(all, e)
		}
		all = append(all, dir(name+"/"))
	}
	tarball := makeTar(t, all)
	for _, comp := range Compressors() {
		t.Run(comp, func(t *testing.T) {
			var imgs [][]byte
			for _, w := range []int{1, 4} {
				m := &memImage{}
				if _, err := Write(context.Background(), m, bytes.NewReader(tarball), Options{Compression: comp, Workers: w, MTime: sde}); err != nil {
					t.Fatal(err)
				}
				imgs = append(imgs, m.b)
			}
			if !bytes.Equal(imgs[0], imgs[1]) {
				t.Fatal("images differ between 1 and 4 workers")
			}
		})
	}
}

// memImage is an in-memory io.WriterAt.
type memImage struct{ b []byte }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

// --- integration: squashfs-tools, squashfs-tools-ng and the kernel as oracles ---

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.Integration(t, "runs "+strings.Join(tools, ", "))
	testenv.Tools(t, tools...)
	testenv.Root(t, "extracting devices, owners and xattrs")
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extract unpacks a tar like the build host would, as the oracle's input.
func extract(t testing.TB, tarball []byte) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	tp := filepath.Join(t.TempDir(), "in.tar")
	if err := os.WriteFile(tp, tarball, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "tar", "-xpf", tp, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", d)
	return d
}

func listing(t testing.TB, img string) string {
	t.Helper()
	return run(t, "unsquashfs", "-lln", img)
}

func TestAgainstMksquashfs(t *testing.T) {
	needTools(t, "mksquashfs", "unsquashfs", "tar")
	for name, es := range cases() {
		t.Run(name, func(t *testing.T) {
			tarball := makeTar(t, es)
			img := writeImage(t, tarball, Options{Workers: 3})
			tree := extract(t, tarball)
			ref := filepath.Join(t.TempDir(), "ref.sqfs")
			run(t, "mksquashfs", tree, ref, "-noappend", "-comp", "zstd", "-quiet", "-no-progress")

			got, want := listing(t, img), listing(t, ref)
			if got != want {
				t.Errorf("unsquashfs -lln differs from mksquashfs's image:\n%s", lineDiff(want, got))
			}
			out := filepath.Join(t.TempDir(), "out")
			run(t, "unsquashfs", "-q", "-n", "-d", out, img)
			compareTrees(t, tree, out)

			stat := run(t, "unsquashfs", "-stat", img)
			if !strings.Contains(stat, "zstd") || !strings.Contains(stat, "Block size 131072") {
				t.Errorf("unsquashfs -stat:\n%s", stat)
			}
			if _, err := exec.LookPath("sqfs2tar"); err == nil {
				cmd := exec.Command("sqfs2tar", img)
				var tarOut bytes.Buffer
				cmd.Stdout = &tarOut
				if err := cmd.Run(); err != nil {
					t.Fatalf("sqfs2tar: %v", err)
				}
				if n := countTar(t, tarOut.Bytes()); n != len(es) {
					t.Errorf("sqfs2tar wrote %d entries, want %d", n, len(es))
				}
			}
		})
	}
}

func TestCompressorsUnsquashfs(t *testing.T) {
	needTools(t, "unsquashfs", "tar")
	tarball := makeTar(t, append(cases()["sizes"], cases()["links"]...))
	tree := extract(t, tarball)
	for _, comp := range Compressors() {
		for _, o := range []Options{{Compression: comp}, {Compression: comp, BlockSize: 4096, Level: compressors[comp].maxLevel}} {
			t.Run(fmt.Sprintf("%s-%d", comp, o.BlockSize), func(t *testing.T) {
				img := writeImage(t, tarball, o)
				out := filepath.Join(t.TempDir(), "out")
				run(t, "unsquashfs", "-q", "-n", "-d", out, img)
				compareTrees(t, tree, out)
			})
		}
	}
}

func TestKernelMount(t *testing.T) {
	needTools(t, "mount", "umount", "tar")
	var all []entry
	for name, es := range cases() {
		for _, e := range es {
			e.name = name + "/" + e.name
			if e.typ == tar.TypeLink {
				e.link = name + "/" + e.link
			}
			all = append(all, e)
		}
		all = append(all, dir(name+"/"))
	}
	tarball := makeTar(t, all)
	tree := extract(t, tarball)
	for _, comp := range Compressors() {
		t.Run(comp, func(t *testing.T) {
			img := writeImage(t, tarball, Options{Compression: comp})
			mnt := t.TempDir()
			if out, err := exec.Command("mount", "-t", "squashfs", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
				if comp == "zstd" {
					t.Fatalf("mount: %v\n%s", err, out)
				}
				testenv.Missing(t, "kernel cannot mount %s squashfs here: %v %s", comp, err, out)
			}
			defer func() { _ = exec.Command("umount", mnt).Run() }()
			compareTrees(t, tree, mnt)
			v := make([]byte, 64)
			n, err := unix.Lgetxattr(filepath.Join(mnt, "xattrs/x/ping"), "security.capability", v)
			if err != nil || string(v[:n]) != capability {
				t.Errorf("security.capability = %x, %v", v[:max(n, 0)], err)
			}
			// Lookups in the 10k-entry directory go through the directory index.
			for _, i := range []int{0, 1234, 5000, 9999} {
				n := fmt.Sprintf("entry-%05d-%s", i, strings.Repeat("x", i%40))
				if _, err := os.Lstat(filepath.Join(mnt, "bigdir/big", n)); err != nil {
					t.Errorf("lookup %s: %v", n, err)
				}
			}
			if _, err := os.Lstat(filepath.Join(mnt, "bigdir/big/entry-00000-zzz")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("lookup of a missing name: %v", err)
			}
		})
	}
}

// snapshot describes every path of a tree: type, mode, owner, size, content
// hash, link target, device, hard link count and xattrs.
func snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d mtime=%d", st.Mode, st.Uid, st.Gid, st.Mtim.Sec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += fmt.Sprintf(" size=%d sha=%s nlink=%d", len(b), hex.EncodeToString(sum[:8]), st.Nlink)
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" dev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if rel != "." {
			desc += " xattrs=" + xattrs(p)
		}
		m[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "error:" + err.Error()
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var out []string
	for _, name := range names {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return "error:" + err.Error()
		}
		out = append(out, fmt.Sprintf("%s=%x", name, v[:vn]))
	}
	return strings.Join(out, ",")
}

func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	w, g := snapshot(t, want), snapshot(t, got)
	var diffs []string
	for p, d := range w {
		if g[p] != d {
			diffs = append(diffs, fmt.Sprintf("%s:\n  want %s\n  got  %s", p, d, g[p]))
		}
	}
	for p := range g {
		if _, ok := w[p]; !ok {
			diffs = append(diffs, "unexpected "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = diffs[:20]
		}
		t.Errorf("trees differ:\n%s", strings.Join(diffs, "\n"))
	}
}

func lineDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for i := 0; i < max(len(wl), len(gl)) && len(out) < 20; i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			out = append(out, "- "+w, "+ "+g)
		}
	}
	return strings.Join(out, "\n")
}

func countTar(t testing.TB, b []byte) int {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	n := 0
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}
