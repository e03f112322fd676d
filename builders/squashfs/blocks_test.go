package squashfs

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/builders/squashfs/blockcache"
)

var _ BlockCache = (*blockcache.Cache)(nil)

// memBlocks is an in-memory BlockCache.
type memBlocks struct {
	mu   sync.Mutex
	m    map[[32]byte][]byte
	gets int
}

func newMemBlocks() *memBlocks { return &memBlocks{m: map[[32]byte][]byte{}} }

func (c *memBlocks) Get(key [32]byte, dst []byte) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gets++
	v, ok := c.m[key]
	return append(dst, v...), ok
}

func (c *memBlocks) Put(key [32]byte, block []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = bytes.Clone(block)
}

// blockTar has large files (data blocks), small ones (fragments), an incompressible file, a
// zero block and duplicates; variant changes one large file's middle block, one small file's
// content (same size) and adds a small file, which moves the fragments after it.
func blockTar(t testing.TB, variant int) []byte {
	es := []entry{dir("d/"), dir("small/")}
	big := content(1, 6*bs+123)
	if variant > 0 {
		big = bytes.Clone(big)
		big[3*bs+7] ^= 0xff
	}
	noise := make([]byte, 2*bs+99)
	r := rand.New(rand.NewPCG(9, 9))
	for i := range noise {
		noise[i] = byte(r.Uint32())
	}
	zeroMid := content(3, 3*bs)
	clear(zeroMid[bs : 2*bs])
	es = append(es, file("d/big", big), file("d/big-dup", content(1, 6*bs+123)), file("d/noise", noise),
		file("d/zero-mid", zeroMid), file("d/other", content(2, 2*bs+5000)))
	for i := range 300 {
		data := content(uint64(100+i), 1000+i*37%5000)
		if variant > 0 && i == 200 {
			data[10] ^= 1
		}
		es = append(es, file(fmt.Sprintf("small/f%03d", i), data))
	}
	if variant > 0 {
		es = append(es, file("small/f250a", content(7777, 3000)))
	}
	return makeTar(t, es)
}

func write(t testing.TB, tarball []byte, opts Options) ([]byte, Result) {
	t.Helper()
	m := &memImage{}
	opts.MTime = sde
	res, err := Write(context.Background(), m, bytes.NewReader(tarball), opts)
	if err != nil {
		t.Fatal(err)
	}
	return m.b, res
}

func TestBlockCacheDeterministic(t *testing.T) {
	base, changed := blockTar(t, 0), blockTar(t, 1)
	for _, comp := range Compressors() {
		t.Run(comp, func(t *testing.T) {
			opts := Options{Compression: comp, Workers: 3}
			want, plain := write(t, base, opts)
			if plain.CachedBlocks != 0 || plain.CompressedBlocks == 0 {
				t.Fatalf("no cache: %+v", plain)
			}
			c := newMemBlocks()
			opts.Blocks = c
			cold, res := write(t, base, opts)
			if !bytes.Equal(cold, want) {
				t.Fatal("cold cache: image differs from the image without a cache")
			}
			// d/big-dup's blocks may hit d/big's values: the writer compresses a file's
			// blocks before it knows the file is a duplicate.
			if res.CachedBlocks+res.CompressedBlocks != plain.CompressedBlocks || res.CachedBlocks > 7 {
				t.Fatalf("cold cache: %+v, want %d blocks in all", res, plain.CompressedBlocks)
			}
			empty := 0
			for _, v := range c.m {
				if len(v) == 0 {
					empty++
				}
			}
			if empty == 0 {
				t.Error("the incompressible blocks were not cached as empty values")
			}
			warm, res := write(t, base, opts)
			if !bytes.Equal(warm, want) {
				t.Fatal("warm cache: image differs from the image without a cache")
			}
			if res.CompressedBlocks != 0 || res.CachedBlocks != plain.CompressedBlocks {
				t.Fatalf("warm cache: %+v, want all %d blocks cached", res, plain.CompressedBlocks)
			}

			// Warm from the base tar, then the changed one.
			wantChanged, _ := write(t, changed, Options{Compression: comp, Workers: 3})
			got, res := write(t, changed, opts)
			if !bytes.Equal(got, wantChanged) {
				t.Fatal("changed tar, warm cache: image differs from the image without a cache")
			}
			if res.CachedBlocks == 0 || res.CompressedBlocks == 0 {
				t.Fatalf("changed tar: %+v, want both hits and misses", res)
			}
			t.Logf("changed tar: %d blocks cached, %d compressed", res.CachedBlocks, res.CompressedBlocks)
		})
	}
}

// Keys cover the compressor, level and block size: another setting never hits.
func TestBlockCacheKeys(t *testing.T) {
	// No duplicate blocks: every hit comes from the first build.
	tarball := makeTar(t, []entry{file("a", content(1, 5*bs+7)), file("b", content(2, 1000)), file("c", content(3, 2000))})
	c := newMemBlocks()
	write(t, tarball, Options{Compression: "zstd", Level: 3, Blocks: c})
	for _, o := range []Options{
		{Compression: "zstd", Level: 4},
		{Compression: "zstd", Level: 3, BlockSize: 64 << 10},
		{Compression: "gzip"},
		{Compression: "lz4"},
	} {
		want, _ := write(t, tarball, o)
		o.Blocks = c
		got, res := write(t, tarball, o)
		if res.CachedBlocks != 0 {
			t.Errorf("%s level %d block size %d: %d hits from another setting", o.Compression, o.Level, o.BlockSize, res.CachedBlocks)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s level %d: image differs", o.Compression, o.Level)
		}
	}
	_, res := write(t, tarball, Options{Compression: "zstd", Level: 3, Blocks: c})
	if res.CompressedBlocks != 0 {
		t.Errorf("same setting again: %d blocks compressed", res.CompressedBlocks)
	}
}

// badBlocks returns values that cannot be right: as long as the block, or longer.
type badBlocks struct{ memBlocks }

func (c *badBlocks) Get(key [32]byte, dst []byte) ([]byte, bool) {
	return append(dst, make([]byte, bs)...), true
}

func TestBlockCacheBadValues(t *testing.T) {
	tarball := blockTar(t, 0)
	want, _ := write(t, tarball, Options{})
	got, res := write(t, tarball, Options{Blocks: &badBlocks{memBlocks{m: map[[32]byte][]byte{}}}})
	if !bytes.Equal(got, want) {
		t.Fatal("image differs")
	}
	if res.CachedBlocks != 0 {
		t.Fatalf("%d oversized values used", res.CachedBlocks)
	}
}

// The persistent cache: cold, warm and warm from another tar, across Open/Close.
func TestPersistentBlockCache(t *testing.T) {
	dir := t.TempDir()
	base, changed := blockTar(t, 0), blockTar(t, 1)
	opts := Options{Compression: "zstd", Level: 3, Workers: 4}
	want, _ := write(t, base, opts)
	wantChanged, _ := write(t, changed, opts)
	for i, step := range []struct {
		tarball, want []byte
		hits          bool
		misses        bool
	}{
		{base, want, true, true}, // d/big-dup hits d/big's values
		{base, want, true, false},
		{changed, wantChanged, true, true},
		{changed, wantChanged, true, false},
		{base, want, true, false},
	} {
		c, err := blockcache.Open(dir, blockcache.Options{})
		if err != nil {
			t.Fatal(err)
		}
		o := opts
		o.Blocks = c
		got, res := write(t, step.tarball, o)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, step.want) {
			t.Fatalf("build %d: image differs from the image without a cache", i)
		}
		if (res.CachedBlocks > 0) != step.hits || (res.CompressedBlocks > 0) != step.misses {
			t.Fatalf("build %d: %d cached, %d compressed", i, res.CachedBlocks, res.CompressedBlocks)
		}
	}
}
