package imagediff

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/builders/squashfs"
	"github.com/imgctl/imgctl/images/boot/verity"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	"github.com/imgctl/imgctl/layers/testenv"
)

// tarEntry is one entry of a test rootfs.
type tarEntry struct {
	name   string
	mode   int64
	uid    int
	target string // symlink
	data   []byte
	dir    bool
}

// kubelet is a file big enough for several data blocks, from seed.
func kubelet(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// squash writes the entries as a root squashfs with the imgctl writer (what builds ship).
func squash(t *testing.T, path string, entries []tarEntry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid, Typeflag: tar.TypeReg, Size: int64(len(e.data))}
		switch {
		case e.dir:
			h.Typeflag, h.Size = tar.TypeDir, 0
		case e.target != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.target, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := squashfs.Write(context.Background(), f, &buf, squashfs.Options{Compression: "zstd", Level: 1, Workers: 1, MTime: 1700000000}); err != nil {
		t.Fatal(err)
	}
}

var (
	kubeletA = kubelet(1, 300<<10)
	kubeletB = kubelet(2, 300<<10)
	big      = kubelet(9, 200<<10) // the same in both, first: its blocks are shared
	rootA    = []tarEntry{
		{name: "bin", mode: 0o755, dir: true},
		{name: "bin/big", mode: 0o755, data: big},
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/gone", mode: 0o644, data: []byte("removed in b\n")},
		{name: "etc/mode", mode: 0o644, data: []byte("same bytes\n")},
		{name: "etc/owner", mode: 0o644, data: []byte("same bytes too\n")},
		{name: "etc/same", mode: 0o644, data: []byte("unchanged\n")},
		{name: "etc/link", mode: 0o777, target: "same"},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/bin", mode: 0o755, dir: true},
		{name: "usr/bin/grows", mode: 0o755, data: []byte("short")},
		{name: "usr/bin/kubelet", mode: 0o755, data: kubeletA},
		{name: "usr/lib", mode: 0o755, data: []byte("a file in a, a directory in b")},
	}
	rootB = []tarEntry{
		{name: "bin", mode: 0o755, dir: true},
		{name: "bin/big", mode: 0o755, data: big},
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/added", mode: 0o600, data: []byte("new in b\n")},
		{name: "etc/mode", mode: 0o600, data: []byte("same bytes\n")},
		{name: "etc/owner", mode: 0o644, uid: 1000, data: []byte("same bytes too\n")},
		{name: "etc/same", mode: 0o644, data: []byte("unchanged\n")},
		{name: "etc/link", mode: 0o777, target: "mode"},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/bin", mode: 0o755, dir: true},
		{name: "usr/bin/grows", mode: 0o755, data: []byte("much longer now")},
		{name: "usr/bin/kubelet", mode: 0o755, data: kubeletB}, // same size, other bytes
		{name: "usr/lib", mode: 0o755, dir: true},
		{name: "usr/lib/x", mode: 0o644, data: []byte("x")},
	}
)

func TestDiffFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.sqfs"), filepath.Join(dir, "b.sqfs")
	squash(t, a, rootA)
	squash(t, b, rootB)
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	got, err := diffFiles(context.Background(), squashRoot{name: "a", path: a, size: size(a)}, squashRoot{name: "b", path: b, size: size(b)})
	if err != nil {
		t.Fatal(err)
	}
	want := []FileChange{
		{Path: "etc/added", Change: Added, Type: "file", NewSize: 9},
		{Path: "etc/gone", Change: Removed, Type: "file", OldSize: 13},
		{Path: "etc/link", Change: Changed, Type: "symlink", OldSize: 4, NewSize: 4, What: []string{"target"}},
		{Path: "etc/mode", Change: Changed, Type: "file", OldSize: 11, NewSize: 11, What: []string{"mode"}},
		{Path: "etc/owner", Change: Changed, Type: "file", OldSize: 15, NewSize: 15, What: []string{"owner"}},
		{Path: "usr/bin/grows", Change: Changed, Type: "file", OldSize: 5, NewSize: 15, What: []string{"content"}},
		{Path: "usr/bin/kubelet", Change: Changed, Type: "file", OldSize: 300 << 10, NewSize: 300 << 10, What: []string{"content"}},
		{Path: "usr/lib", Change: Changed, Type: "dir", OldSize: 29, NewSize: got.Changes[7].NewSize, What: []string{"type"}},
		{Path: "usr/lib/x", Change: Added, Type: "file", NewSize: 1},
	}
	if !reflect.DeepEqual(got.Changes, want) {
		t.Errorf("changes:\n got %+v\nwant %+v", got.Changes, want)
	}
	if got.Added != 2 || got.Removed != 1 || got.Changed != 6 || got.Unchanged != 6 ||
		got.AddedBytes != 10 || got.RemovedBytes != 13 || got.ChangedBytes != 11+15+15+300<<10 {
		t.Errorf("counts: %+v", got)
	}
}

var unsquashLine = regexp.MustCompile(`^(\S+) (\d+)/(\d+) +(\d+) \S+ \S+ squashfs-root/(.+)$`)

// The reader (go-diskfs) lists what unsquashfs lists: every path, type, permission bits, owner,
// size and symlink target.
func TestTreeMatchesUnsquashfs(t *testing.T) {
	testenv.Tools(t, "unsquashfs")
	p := filepath.Join(t.TempDir(), "b.sqfs")
	squash(t, p, rootB)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	fsys, done, err := squashRoot{name: "b", path: p, size: fi.Size()}.open()
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	got, err := tree(context.Background(), "b", fsys)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unsquashfs", "-lln", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		m := unsquashLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n++
		name, target, _ := strings.Cut(m[5], " -> ")
		e := got[name]
		if e == nil {
			t.Errorf("unsquashfs lists %s, the reader does not", name)
			continue
		}
		size, _ := strconv.ParseInt(m[4], 10, 64)
		uid, _ := strconv.Atoi(m[2])
		if mode := e.perm.String()[1:]; mode != m[1][1:] || e.size != size || int(e.uid) != uid || e.target != target {
			t.Errorf("%s: reader %s %d %d %q, unsquashfs %s %d %d %q", name, mode, e.size, e.uid, e.target, m[1], size, uid, target)
		}
	}
	if n != len(got) || n != len(rootB) {
		t.Errorf("unsquashfs lists %d paths, the reader %d, the tar has %d", n, len(got), len(rootB))
	}
}

// putRoot stores an image whose rootfs.squashfs is the squashfs at sq (with a dm-verity hash
// area and its annotations if withVerity), and a kernel and initrd from kernel and initrd.
func putRoot(t *testing.T, st *store.Store, version string, epoch int64, sq string, withVerity bool, kernel, initrd string, layers []manifest.Layer) store.Image {
	t.Helper()
	ctx := context.Background()
	data, err := os.ReadFile(sq)
	if err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{}
	if withVerity {
		tree, err := verity.Build(ctx, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		ann[manifest.AnnotationRootVerityRootHash] = tree.RootHashHex()
		ann[manifest.AnnotationRootVerityOffset] = strconv.Itoa(len(data))
		data = append(data, tree.HashArea()...)
	}
	var arts []manifest.Artifact
	for _, f := range []struct {
		name, mt string
		data     []byte
		ann      map[string]string
	}{
		{manifest.KernelArtifact, manifest.KernelMediaType, []byte(kernel), nil},
		{manifest.InitrdArtifact, manifest.InitrdMediaType, []byte(initrd), nil},
		{manifest.RootSquashfsArtifact, manifest.SquashfsMediaType, data, ann},
	} {
		d, n, err := st.WriteBlob(ctx, bytes.NewReader(f.data), int64(len(f.data)), "")
		if err != nil {
			t.Fatal(err)
		}
		arts = append(arts, manifest.Artifact{Name: f.name, MediaType: f.mt, Digest: d, Size: n, Annotations: f.ann})
	}
	cfg := storetest.Config(version, epoch)
	cfg.Layers = layers
	desc, err := st.PutImage(ctx, cfg, arts)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Resolve(ctx, desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// blocksNotIn counts b's 4 KiB blocks (the squashfs part) whose bytes are in no block of a.
func blocksNotIn(t *testing.T, a, b string) (total, fetch uint64) {
	t.Helper()
	read := func(p string) []byte {
		d, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	da, db := read(a), read(b)
	have := map[string]bool{}
	for i := 0; i < len(da); i += verity.BlockSize {
		have[string(da[i:i+verity.BlockSize])] = true
	}
	for i := 0; i < len(db); i += verity.BlockSize {
		total++
		if !have[string(db[i:i+verity.BlockSize])] {
			fetch++
		}
	}
	return total, fetch
}

func layer(role, version string) manifest.Layer {
	return manifest.Layer{Role: role, Version: version, Digest: digest.FromString(role + version), Size: int64(len(version))}
}

func TestDiffImages(t *testing.T) {
	dir := t.TempDir()
	sqA, sqB := filepath.Join(dir, "a.sqfs"), filepath.Join(dir, "b.sqfs")
	squash(t, sqA, rootA)
	squash(t, sqB, rootB)
	st := storetest.Open(t)
	a := putRoot(t, st, "1.0.0", 1700000000, sqA, true, "kernel", "initrd a", []manifest.Layer{layer("base", "1"), layer("kubelet", "1.21.13"), layer("extra", "x")})
	b := putRoot(t, st, "1.0.1", 1700000100, sqB, true, "kernel", "initrd of b", []manifest.Layer{layer("base", "1"), layer("kubelet", "1.21.14"), layer("bootstrap", "2")})
	r, err := Diff(context.Background(), st, a, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantLayers := []Layer{
		{Role: "base", Change: Same, Old: &Version{Digest: layer("base", "1").Digest.String(), Version: "1", Size: 1}, New: &Version{Digest: layer("base", "1").Digest.String(), Version: "1", Size: 1}},
		{Role: "kubelet", Change: Changed, Old: &Version{Digest: layer("kubelet", "1.21.13").Digest.String(), Version: "1.21.13", Size: 7}, New: &Version{Digest: layer("kubelet", "1.21.14").Digest.String(), Version: "1.21.14", Size: 7}},
		{Role: "bootstrap", Change: Added, New: &Version{Digest: layer("bootstrap", "2").Digest.String(), Version: "2", Size: 1}},
		{Role: "extra", Change: Removed, Old: &Version{Digest: layer("extra", "x").Digest.String(), Version: "x", Size: 1}},
	}
	if !reflect.DeepEqual(r.Layers, wantLayers) {
		t.Errorf("layers:\n got %+v\nwant %+v", r.Layers, wantLayers)
	}
	if r.Boot[0].Change != Same || r.Boot[1].Change != Changed || r.Boot[2].Change != Changed {
		t.Errorf("boot artifacts: %+v", r.Boot)
	}
	if r.Files == nil || r.Files.Changed != 6 || r.Files.Added != 2 || r.Files.Removed != 1 {
		t.Errorf("files: %+v (%s)", r.Files, r.FilesMissing)
	}
	total, fetch := blocksNotIn(t, sqA, sqB)
	if r.Blocks == nil || r.Blocks.Blocks != total || r.Blocks.Fetch != fetch || r.Blocks.Copy != total-fetch || !r.Blocks.VerityA || !r.Blocks.VerityB {
		t.Fatalf("blocks: %+v (%s), want %d blocks, %d fetched", r.Blocks, r.BlocksMissing, total, fetch)
	}
	if fetch == 0 || fetch == total {
		t.Fatalf("the fixture should share some blocks and not others: %d of %d fetched", fetch, total)
	}
	hashArea := verity.HashAreaSize(total)
	rootBytes := int64(total)*verity.BlockSize + hashArea
	want := &Update{BlockBytes: int64(fetch) * verity.BlockSize, HashAreaBytes: hashArea, InitrdBytes: int64(len("initrd of b")), RootBytes: rootBytes}
	want.FetchBytes = want.BlockBytes + want.HashAreaBytes + want.InitrdBytes
	want.Percent = 100 * float64(want.FetchBytes) / float64(rootBytes)
	if !reflect.DeepEqual(r.Update, want) {
		t.Errorf("update:\n got %+v\nwant %+v", r.Update, want)
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"files":{"changes":[`, `"added":2,"removed":1,"changed":6,"unchanged":6,`, `"update":{"fetchBytes":`, `"blocks":{"blocks":`} {
		if !bytes.Contains(js, []byte(key)) {
			t.Errorf("JSON has no %s:\n%s", key, js)
		}
	}
	var text bytes.Buffer
	if err := WriteText(&text, r, 1); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"kubelet    changed  1.21.13 sha256:",
		"files: 6 changed (",
		"  changed  /etc/link  symlink target",
		"  … and 5 more changed (-o json lists all)",
		"  added    /etc/added  file 9 B",
		"  removed  /etc/gone  file 13 B",
		"root blocks: b has " + strconv.FormatUint(total, 10) + " blocks of 4 KiB: " + strconv.FormatUint(total-fetch, 10) + " in a (copied), " + strconv.FormatUint(fetch, 10) + " not (fetched)",
		"an update from a to b fetches ",
	} {
		if !strings.Contains(text.String(), line) {
			t.Errorf("text has no %q:\n%s", line, text.String())
		}
	}
}

// Roots without a hash area are compared by hashing their blocks; an image without a root
// squashfs gets its layers and artifacts compared and says why the rest is missing.
func TestDiffWithoutVerityOrRoot(t *testing.T) {
	dir := t.TempDir()
	sqA, sqB := filepath.Join(dir, "a.sqfs"), filepath.Join(dir, "b.sqfs")
	squash(t, sqA, rootA)
	squash(t, sqB, rootB)
	st := storetest.Open(t)
	a := putRoot(t, st, "1.0.0", 1700000000, sqA, false, "kernel a", "initrd", nil)
	b := putRoot(t, st, "1.0.1", 1700000100, sqB, true, "kernel b", "initrd", nil)
	r, err := Diff(context.Background(), st, a, b, Options{NoFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	total, fetch := blocksNotIn(t, sqA, sqB)
	if r.Blocks == nil || r.Blocks.Fetch != fetch || r.Blocks.Blocks != total || r.Blocks.VerityA || !r.Blocks.VerityB {
		t.Errorf("blocks without verity in a: %+v, want %d of %d fetched", r.Blocks, fetch, total)
	}
	if r.Files != nil || r.FilesMissing != "not compared (--no-files)" || r.Update.KernelBytes != int64(len("kernel b")) {
		t.Errorf("files %+v %q, update %+v", r.Files, r.FilesMissing, r.Update)
	}
	old := storetest.PutVersion(t, st, "0.9.0", 1690000000) // rootfs.tar, vmlinuz, initrd.img only
	r, err = Diff(context.Background(), st, old, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "image 0.9.0 (" + old.Digest().String() + ") has no rootfs.squashfs artifact (build it with imgctl's raw or pxe target)"
	if r.Files != nil || r.Blocks != nil || r.Update != nil || r.FilesMissing != want || r.BlocksMissing != want {
		t.Errorf("image without a root: files %+v (%q), blocks %+v (%q)", r.Files, r.FilesMissing, r.Blocks, r.BlocksMissing)
	}
	if r.Boot[2].Change != Added || len(r.Layers) == 0 {
		t.Errorf("image without a root: boot %+v, layers %+v", r.Boot, r.Layers)
	}
}
