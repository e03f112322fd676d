package squashfs

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/imgctl/imgctl/builders/squashfs/blockcache"
)

// TestMeasureBlockCache times Write on a real rootfs tar (IMGCTL_BLOCKCACHE_TAR) the way the raw
// target runs it (zstd 3, 2 workers, a new image file, the cache opened and closed around it):
// no cache, a cold cache, a warm cache on the same tar, and a warm cache on changed tars, the
// kubelet (IMGCTL_BLOCKCACHE_FILE, default usr/bin/kubelet) with one byte appended and with
// every block changed (a new kubelet version), and IMGCTL_BLOCKCACHE_TAR2 if set (another
// build's rootfs). Every image must equal the one written without a cache.
//
//	IMGCTL_BLOCKCACHE_TAR=rootfs.tar go test -run MeasureBlockCache -v -timeout 30m ./builders/squashfs/
func TestMeasureBlockCache(t *testing.T) {
	src := os.Getenv("IMGCTL_BLOCKCACHE_TAR")
	if src == "" {
		t.Skip("IMGCTL_BLOCKCACHE_TAR is not set")
	}
	name := os.Getenv("IMGCTL_BLOCKCACHE_FILE")
	if name == "" {
		name = "usr/bin/kubelet"
	}
	runs := 3
	if n, err := strconv.Atoi(os.Getenv("IMGCTL_BLOCKCACHE_RUNS")); err == nil && n > 0 {
		runs = n
	}
	work := t.TempDir()
	appended := filepath.Join(work, "appended.tar")
	rewriteTar(t, src, appended, name, func(b []byte) []byte { return append(b, '\n') })
	rebuilt := filepath.Join(work, "rebuilt.tar")
	rewriteTar(t, src, rebuilt, name, func(b []byte) []byte {
		for i := 1000; i < len(b); i += 4096 {
			b[i] ^= 0x5a
		}
		return b
	})
	opts := Options{Compression: "zstd", Level: 3, Workers: 2, MTime: sde}
	out := filepath.Join(work, "img.sqfs")

	// once writes tarPath with the cache in dir ("" = none) and returns seconds and digest.
	once := func(tarPath, dir string) (float64, string, Result) {
		t.Helper()
		_ = os.Remove(out)
		in, err := os.Open(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		fi, _ := in.Stat()
		start := time.Now()
		o := opts
		var c *blockcache.Cache
		if dir != "" {
			if c, err = blockcache.Open(dir, blockcache.Options{}); err != nil {
				t.Fatal(err)
			}
			o.Blocks = c
		}
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Write(context.Background(), f, io.NewSectionReader(in, 0, fi.Size()), o)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if c != nil {
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
		secs := time.Since(start).Seconds()
		return secs, fileSum(t, out), res
	}
	report := func(label string, secs []float64, res Result, base float64) float64 {
		slices.Sort(secs)
		med := secs[len(secs)/2]
		pct := ""
		if base > 0 {
			pct = " (" + strconv.FormatFloat(100*med/base, 'f', 0, 64) + "% of no cache)"
		}
		t.Logf("%-34s median %.3fs min %.3fs%s  cached %d compressed %d", label, med, secs[0], pct, res.CachedBlocks, res.CompressedBlocks)
		return med
	}

	inputs := []struct{ label, path string }{{"same tar", src}, {"kubelet +1 byte", appended}, {"kubelet every block changed", rebuilt}}
	if p := os.Getenv("IMGCTL_BLOCKCACHE_TAR2"); p != "" {
		inputs = append(inputs, struct{ label, path string }{"other rootfs (" + filepath.Base(p)[:12] + ")", p})
	}
	// Read the inputs once so that the first timed run does not pay for the disk.
	for _, in := range inputs {
		_ = fileSum(t, in.path)
	}
	want := map[string]string{}
	var base float64
	for _, in := range inputs {
		var secs []float64
		var res Result
		for range runs {
			s, sum, r := once(in.path, "")
			secs, res = append(secs, s), r
			want[in.path] = sum
		}
		m := report("no cache, "+in.label, secs, res, base)
		if base == 0 {
			base = m
		}
		t.Logf("  image sha256 %s", want[in.path])
	}

	// Cold: a new cache directory every run. The last one is the warm cache of the rest.
	var secs []float64
	var res Result
	var warm string
	for i := range runs {
		warm = filepath.Join(work, "cold"+strconv.Itoa(i))
		s, sum, r := once(src, warm)
		if sum != want[src] {
			t.Fatal("cold cache: image differs from the image without a cache")
		}
		secs, res = append(secs, s), r
	}
	report("cold cache", secs, res, base)
	t.Logf("cache directory after one build: %d MB", dirSize(t, warm)>>20)

	for _, in := range inputs {
		secs = nil
		for i := range runs {
			// Every run starts from the cache of one build of the original tar.
			dir := filepath.Join(work, "warm-"+strconv.Itoa(len(want))+"-"+strconv.Itoa(i)+filepath.Base(in.path))
			linkCache(t, warm, dir)
			s, sum, r := once(in.path, dir)
			if sum != want[in.path] {
				t.Fatalf("warm cache, %s: image differs from the image without a cache", in.label)
			}
			secs, res = append(secs, s), r
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}
		report("warm cache, "+in.label, secs, res, base)
	}
}

// rewriteTar copies the tar src to dst with the content of entry name changed by edit.
func rewriteTar(t *testing.T, src, dst, name string, edit func([]byte) []byte) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	found := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if cleanName(hdr.Name) == name {
			data, found = edit(data), true
			hdr.Size = int64(len(data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("%s has no %s", src, name)
	}
}

// linkCache makes dst a copy of the cache directory src, packs hard-linked.
func linkCache(t *testing.T, src, dst string) {
	t.Helper()
	for _, sub := range []string{"packs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dst, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	packs, _ := filepath.Glob(filepath.Join(src, "packs", "*"))
	for _, p := range packs {
		if err := os.Link(p, filepath.Join(dst, "packs", filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.ReadFile(filepath.Join(src, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "state"), st, 0o644); err != nil {
		t.Fatal(err)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func fileSum(t *testing.T, p string) string {
	f, err := os.Open(p)
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
