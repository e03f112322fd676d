package kmod

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/kmod/kmodtest"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

const kver = "6.1.0-99-test"

type testMod struct {
	path    string // relative to lib/modules/KVER, with compression extension
	info    []string
	exports []string
	needs   []string
}

func (m testMod) elf() []byte { return kmodtest.ModuleWithSymbols(m.info, m.exports, m.needs) }

func compress(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch {
	case strings.HasSuffix(name, ".xz"):
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case strings.HasSuffix(name, ".zst"):
		w, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case strings.HasSuffix(name, ".gz"):
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
	default:
		return data
	}
	return b.Bytes()
}

type tarEntry struct {
	name string
	data []byte
	typ  byte
	link string
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: typ, Linkname: e.link}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(e.data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// synthetic is a small kernel tree exercising depmod's corner cases.
var synthetic = []testMod{
	{path: "kernel/lib/base-lib.ko", info: []string{"license=GPL", "name=base_lib"}, exports: []string{"base_fn", "base_data"}, needs: []string{"printk"}},
	{path: "kernel/drivers/mid.ko.xz", info: []string{"depends=base_lib", "alias=of:N*T*Cmid", "alias=mid-[a-]x-y"},
		exports: []string{"mid_fn"}, needs: []string{"base_fn", "kmalloc"}},
	{path: "kernel/drivers/top.ko.zst", info: []string{"depends=mid,base_lib", "alias=pci:v00001AF4d00001001sv*sd*bc*sc*i*",
		"softdep=pre: crc32c post: extra_mod", "alias=devname:topdev", "alias=char-major-10-237"},
		needs: []string{"mid_fn", "base_data", "base_fn"}},
	{path: "kernel/drivers/other.ko", info: []string{"alias=block-major-7-*", "alias=devname:loop-control", "alias=char-major-10-237"}, exports: []string{"other_fn"}},
	// Not in modules.order: goes after the listed ones, in kmod hash order.
	{path: "extra/zz-unlisted.ko", info: []string{"alias=fs-unlisted"}, needs: []string{"other_fn"}},
	{path: "extra/aa-unlisted.ko", info: []string{"alias=fs-aa"}},
	{path: "extra/mm_unlisted.ko", info: []string{"alias=fs-mm", "alias=fs-aa"}, exports: []string{"base_fn"}},
	// updates/ wins over kernel/ for the same module name.
	{path: "kernel/fs/dup.ko", info: []string{"alias=fs-dup-old"}},
	{path: "updates/dup.ko", info: []string{"alias=fs-dup-new"}, needs: []string{"mid_fn"}},
	// Excluded directories.
	{path: "build/ignored.ko", info: []string{"alias=ignored"}},
}

const syntheticOrder = "kernel/drivers/top.ko\nkernel/drivers/other.ko\nkernel/lib/base-lib.ko\nkernel/drivers/mid.ko\nkernel/fs/dup.ko\nkernel/missing.ko\n"

const syntheticBuiltin = "kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme/host/nvme-core.ko\n\nkernel/crypto/crc32c_generic.ko\n"

var syntheticBuiltinModinfo = "ext4.license=GPL\x00ext4.alias=fs-ext4\x00ext4.alias=ext3\x00nvme_core.parm=x:int\x00crc32c_generic.alias=crypto-crc32c\x00crc32c_generic.alias=crc32c\x00"

func syntheticTar(t *testing.T, prefix string, mods []testMod) []byte {
	t.Helper()
	root := prefix + "lib/modules/" + kver + "/"
	entries := []tarEntry{{name: prefix, typ: tar.TypeDir}, {name: root, typ: tar.TypeDir}}
	for _, m := range mods {
		entries = append(entries, tarEntry{name: root + m.path, data: compress(t, m.path, m.elf())})
	}
	entries = append(entries,
		tarEntry{name: root + "modules.order", data: []byte(syntheticOrder)},
		tarEntry{name: root + "modules.builtin", data: []byte(syntheticBuiltin)},
		tarEntry{name: root + "modules.builtin.modinfo", data: []byte(syntheticBuiltinModinfo)},
		tarEntry{name: root + "build", typ: tar.TypeSymlink, link: "/usr/src/linux-headers"},
		tarEntry{name: prefix + "boot/vmlinuz-" + kver, data: []byte("not a module")},
	)
	return makeTar(t, entries)
}

func generate(t *testing.T, tarball []byte) map[string]File {
	t.Helper()
	files, err := Generate(context.Background(), bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]File{}
	for _, f := range files {
		m[f.Path] = f
	}
	if len(m) != 10 {
		t.Fatalf("got %d files", len(m))
	}
	return m
}

func TestSyntheticText(t *testing.T) {
	files := generate(t, syntheticTar(t, "./", synthetic))
	root := "lib/modules/" + kver + "/"
	// mm_unlisted re-exports base_fn and, later in depmod's order, owns it.
	wantDep := `kernel/drivers/top.ko.zst: kernel/lib/base-lib.ko kernel/drivers/mid.ko.xz extra/mm_unlisted.ko
kernel/drivers/other.ko:
kernel/lib/base-lib.ko:
kernel/drivers/mid.ko.xz: extra/mm_unlisted.ko
`
	dep := string(files[root+"modules.dep"].Data)
	if !strings.HasPrefix(dep, wantDep) {
		t.Errorf("modules.dep:\n%s\nwant prefix:\n%s", dep, wantDep)
	}
	for _, want := range []string{"updates/dup.ko: kernel/drivers/mid.ko.xz extra/mm_unlisted.ko\n",
		"extra/zz-unlisted.ko: kernel/drivers/other.ko\n", "extra/mm_unlisted.ko:\n", "extra/aa-unlisted.ko:\n"} {
		if !strings.Contains(dep, want) {
			t.Errorf("modules.dep lacks %q:\n%s", want, dep)
		}
	}
	if strings.Contains(dep, "kernel/fs/dup.ko") || strings.Contains(dep, "ignored") {
		t.Errorf("modules.dep has a shadowed or excluded module:\n%s", dep)
	}
	if got := strings.Count(dep, "\n"); got != 8 {
		t.Errorf("modules.dep has %d lines, want 8", got)
	}
	// "block-major-7-*" has no minor number, so depmod ignores it.
	wantDevname := "# Device nodes to trigger on-demand module loading.\ntop topdev c10:237\nother loop-control c10:237\n"
	if got := string(files[root+"modules.devname"].Data); got != wantDevname {
		t.Errorf("modules.devname = %q, want %q", got, wantDevname)
	}
	wantSoftdep := "# Soft dependencies extracted from modules themselves.\nsoftdep top pre: crc32c post: extra_mod\n"
	if got := string(files[root+"modules.softdep"].Data); got != wantSoftdep {
		t.Errorf("modules.softdep = %q", got)
	}
	alias := string(files[root+"modules.alias"].Data)
	if !strings.Contains(alias, "alias mid-[a-]x-y mid\n") {
		t.Errorf("modules.alias:\n%s", alias)
	}
	syms := string(files[root+"modules.symbols"].Data)
	// base_fn is exported twice; depmod keeps the last module in its order.
	for _, want := range []string{"alias symbol:base_fn mm_unlisted\n", "alias symbol:mid_fn mid\n", "alias symbol:base_data base_lib\n"} {
		if !strings.Contains(syms, want) {
			t.Errorf("modules.symbols lacks %q:\n%s", want, syms)
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f.Path, ".bin") && !bytes.HasPrefix(f.Data, []byte{0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1}) {
			t.Errorf("%s: bad header % x", f.Path, f.Data[:8])
		}
	}
}

func TestScanAndClosure(t *testing.T) {
	ixs, err := Scan(context.Background(), bytes.NewReader(syntheticTar(t, "usr/", synthetic)))
	if err != nil {
		t.Fatal(err)
	}
	if len(ixs) != 1 || ixs[0].KernelVersion != kver {
		t.Fatalf("Scan: %v", ixs)
	}
	ix := ixs[0]
	top := ix.Modules["top"]
	if top == nil || top.Path != "kernel/drivers/top.ko.zst" {
		t.Fatalf("top = %+v", top)
	}
	if strings.Join(top.Depends, ",") != "base_lib,mid,mm_unlisted" {
		t.Errorf("top.Depends = %v", top.Depends)
	}
	if strings.Join(top.SoftdepPre, ",") != "crc32c" || strings.Join(top.SoftdepPost, ",") != "extra_mod" {
		t.Errorf("softdeps %v %v", top.SoftdepPre, top.SoftdepPost)
	}
	if len(top.Aliases) != 3 {
		t.Errorf("aliases %v", top.Aliases)
	}
	if !ix.Builtin["ext4"] || !ix.Builtin["nvme_core"] || len(ix.Builtin) != 3 {
		t.Errorf("Builtin = %v", ix.Builtin)
	}
	if ix.Modules["dup"].Path != "updates/dup.ko" {
		t.Errorf("dup = %+v", ix.Modules["dup"])
	}
	mods, err := ix.Closure("top", "ext4", "zz-unlisted", "dup")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if got := strings.Join(names, " "); got != "mm_unlisted mid base_lib top other zz_unlisted dup" {
		t.Errorf("Closure = %s", got)
	}
	if _, err := ix.Closure("top", "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Closure(nope) err = %v", err)
	}
	files, err := ix.Files()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(files[0].Path, "usr/lib/modules/"+kver+"/") {
		t.Errorf("path %s", files[0].Path)
	}

	// A hand-built index works for Closure but cannot produce files.
	hand := &Index{KernelVersion: "x", Builtin: map[string]bool{"b": true}, Modules: map[string]*Module{
		"a": {Name: "a", Depends: []string{"c", "b"}},
		"c": {Name: "c", Depends: []string{"d"}},
		"d": {Name: "d"},
	}}
	mods, err = hand.Closure("a")
	if err != nil {
		t.Fatal(err)
	}
	names = names[:0]
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if got := strings.Join(names, " "); got != "d c a" {
		t.Errorf("hand Closure = %s", got)
	}
	if _, err := hand.Files(); err == nil {
		t.Error("hand.Files: no error")
	}
}

func TestDeterministic(t *testing.T) {
	// Reversing the tar order must not change anything.
	rev := append([]testMod(nil), synthetic...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	a := generate(t, syntheticTar(t, "", synthetic))
	b := generate(t, syntheticTar(t, "./", rev))
	for p, f := range a {
		if !bytes.Equal(f.Data, b[p].Data) {
			t.Errorf("%s depends on tar order", p)
		}
	}
}

// TestSyntheticDepmod runs the real depmod on the synthetic tree (gzip
// modules excluded: Debian's kmod is built without zlib).
func TestSyntheticDepmod(t *testing.T) {
	needTools(t, "depmod")
	tarball := syntheticTar(t, "", synthetic)
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o755)
			var b bytes.Buffer
			b.ReadFrom(tr)
			if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, err := exec.Command("depmod", "-b", dir, kver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	for p, f := range generate(t, tarball) {
		ref, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ref, f.Data) {
			t.Errorf("%s differs from depmod:\n got %q\nwant %q", p, f.Data, ref)
		}
	}
}

func TestCompressedGzip(t *testing.T) {
	mods := []testMod{
		{path: "kernel/a.ko.gz", exports: []string{"a_fn"}, info: []string{"alias=a-gz"}},
		{path: "kernel/b.ko", needs: []string{"a_fn"}},
	}
	files := generate(t, syntheticTar(t, "", mods))
	dep := string(files["lib/modules/"+kver+"/modules.dep"].Data)
	if !strings.Contains(dep, "kernel/b.ko: kernel/a.ko.gz\n") {
		t.Errorf("modules.dep:\n%s", dep)
	}
}

func TestCorruptModule(t *testing.T) {
	root := "lib/modules/" + kver + "/"
	good := testMod{path: "kernel/good.ko"}.elf()
	for name, data := range map[string][]byte{
		"kernel/drivers/bad.ko":         []byte("this is not an ELF file"),
		"kernel/drivers/truncated.ko":   good[:100],
		"kernel/drivers/badxz.ko.xz":    []byte("not xz"),
		"kernel/drivers/nomodinfo.ko":   kmodtest.ELF(map[string][]byte{".text": {0}}, []string{".text"}, nil),
		"kernel/drivers/badzstd.ko.zst": []byte("not zstd at all"),
	} {
		tarball := makeTar(t, []tarEntry{{name: root + "kernel/good.ko", data: good}, {name: root + name, data: data}})
		_, err := Generate(context.Background(), bytes.NewReader(tarball))
		if err == nil || !strings.Contains(err.Error(), root+name) {
			t.Errorf("%s: err = %v, want it to name the file", name, err)
		}
	}
}

func TestCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Scan(ctx, bytes.NewReader(syntheticTar(t, "", synthetic)))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
}

func TestNoModulesOrderUsesHashOrder(t *testing.T) {
	// Without modules.order, depmod lists modules in its hash table order;
	// compare with depmod itself when available.
	needTools(t, "depmod")
	dir := t.TempDir()
	root := "lib/modules/" + kver + "/"
	var entries []tarEntry
	for _, n := range []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"} {
		data := testMod{path: n + ".ko", info: []string{"alias=x-" + n}}.elf()
		entries = append(entries, tarEntry{name: root + "kernel/" + n + ".ko", data: data})
		os.MkdirAll(filepath.Join(dir, root, "kernel"), 0o755)
		os.WriteFile(filepath.Join(dir, root, "kernel", n+".ko"), data, 0o644)
	}
	if out, err := exec.Command("depmod", "-b", dir, kver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	for p, f := range generate(t, makeTar(t, entries)) {
		ref, _ := os.ReadFile(filepath.Join(dir, p))
		if !bytes.Equal(ref, f.Data) {
			t.Errorf("%s differs:\n got %q\nwant %q", p, f.Data, ref)
		}
	}
}

func TestTrieLookup(t *testing.T) {
	tr := newTrie()
	keys := map[string]string{"abc": "1", "ab": "2", "abd": "3", "b": "4", "": "5", "abcdef": "6"}
	order := []string{"abc", "ab", "abd", "b", "", "abcdef"}
	for i, k := range order {
		if err := tr.insert(k, keys[k], uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	tr.insert("ab", "2b", 1) // same priority as "2": inserted before it
	data, err := tr.bytes()
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range keys {
		got := lookup(t, data, k)
		want := []string{v}
		if k == "ab" {
			want = []string{"2b", "2"}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("lookup(%q) = %v, want %v", k, got, want)
		}
	}
	if got := lookup(t, data, "a"); got != nil {
		t.Errorf("lookup(a) = %v", got)
	}
	if err := tr.insert("caf\xc3\xa9", "x", 0); err == nil {
		t.Error("non-ASCII key accepted")
	}
}

// lookup is an independent reader of the index format (exact match).
func lookup(t *testing.T, data []byte, key string) []string {
	t.Helper()
	be := func(o uint32) uint32 {
		return uint32(data[o])<<24 | uint32(data[o+1])<<16 | uint32(data[o+2])<<8 | uint32(data[o+3])
	}
	off := be(8)
	for {
		pos := off & nodeOffsetMask
		if off&nodePrefix != 0 {
			end := pos + uint32(bytes.IndexByte(data[pos:], 0))
			prefix := string(data[pos:end])
			if !strings.HasPrefix(key, prefix) {
				return nil
			}
			key = key[len(prefix):]
			pos = end + 1
		}
		var first, last byte
		var childs uint32
		if off&nodeChilds != 0 {
			first, last = data[pos], data[pos+1]
			childs = pos + 2
			pos = childs + 4*uint32(last-first+1)
		}
		if key == "" {
			if off&nodeValues == 0 {
				return nil
			}
			n := be(pos)
			pos += 4
			var out []string
			for i := uint32(0); i < n; i++ {
				pos += 4
				end := pos + uint32(bytes.IndexByte(data[pos:], 0))
				out = append(out, string(data[pos:end]))
				pos = end + 1
			}
			return out
		}
		c := key[0]
		if off&nodeChilds == 0 || c < first || c > last {
			return nil
		}
		off = be(childs + 4*uint32(c-first))
		if off == 0 {
			return nil
		}
		key = key[1:]
	}
}
