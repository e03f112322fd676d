package sparse

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// chunk is one chunk of a hand-made sparse image.
type chunk struct {
	typ    uint16
	blocks uint32
	body   []byte
}

// image builds a sparse image with block size blk and total blocks; extra pads the file and
// chunk headers beyond their minimum length (readers must skip it).
func image(blk, total uint32, extra int, chunks ...chunk) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, fileHeaderLen+extra)
	le.PutUint32(hdr[0:], magic)
	le.PutUint16(hdr[4:], 1)
	le.PutUint16(hdr[8:], uint16(fileHeaderLen+extra))
	le.PutUint16(hdr[10:], uint16(chunkHeadLen+extra))
	le.PutUint32(hdr[12:], blk)
	le.PutUint32(hdr[16:], total)
	le.PutUint32(hdr[20:], uint32(len(chunks)))
	out := hdr
	for _, c := range chunks {
		ch := make([]byte, chunkHeadLen+extra)
		le.PutUint16(ch[0:], c.typ)
		le.PutUint32(ch[4:], c.blocks)
		le.PutUint32(ch[8:], uint32(len(ch)+len(c.body)))
		out = append(append(out, ch...), c.body...)
	}
	return out
}

// imageLen is the length of the image its headers describe (file header and every chunk with
// its body), if the headers are all there.
func imageLen(img []byte) (int, bool) {
	le := binary.LittleEndian
	if len(img) < fileHeaderLen {
		return 0, false
	}
	n := int(le.Uint16(img[8:]))
	for range le.Uint32(img[20:]) {
		if n+chunkHeadLen > len(img) {
			return 0, false
		}
		n += int(le.Uint32(img[n+8:]))
	}
	return n, n <= len(img)
}

// declared is the expanded size an image's header claims, if it has one.
func declared(img []byte) (int64, bool) {
	if len(img) < fileHeaderLen || binary.LittleEndian.Uint32(img) != magic {
		return 0, false
	}
	return int64(binary.LittleEndian.Uint32(img[12:])) * int64(binary.LittleEndian.Uint32(img[16:])), true
}

// expandAlloc bounds what Expand may allocate for an input of n bytes: its 1 MiB read buffer,
// and per chunk header present in the input a copy buffer — never what the header claims.
func expandAlloc(n int) uint64 { return 4<<20 + 48<<10*uint64(n/chunkHeadLen+1) }

func expandBytes(t *testing.T, dst *os.File, img []byte) (int64, error) {
	t.Helper()
	var n int64
	var err error
	testenv.MaxAlloc(t, expandAlloc(len(img)), "Expand", func() {
		n, err = Expand(context.Background(), dst, bytes.NewReader(img))
	})
	return n, err
}

// TestExpandBoundsMemory: a 68-byte image must not allocate what its block size claims (a fill
// chunk allocated a whole block of pattern: up to 4 GiB).
func TestExpandBoundsMemory(t *testing.T) {
	dst, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	img := image(1<<30, 0, 0, chunk{chunkFill, 0, []byte{1, 2, 3, 4}})
	expandBytes(t, dst, img) // an error is fine; the allocation is not
}

// TestExpandRejectsOverflow: chunk sizes are block counts times the block size; with the
// largest block size the product overflowed int64 and a chunk of 2^32 blocks passed the
// overrun check of a 1-block image.
func TestExpandRejectsOverflow(t *testing.T) {
	dst, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	img := image(0xfffffffc, 1, 0, chunk{chunkDontCare, 0xffffffff, nil})
	if n, err := Expand(context.Background(), dst, bytes.NewReader(img)); err == nil {
		t.Fatalf("Expand accepted a chunk of 2^32-1 blocks in a 1-block image (size %d)", n)
	}
}

// FuzzExpand: Expand either fails (returning 0) or leaves exactly the size the header declares
// and fails on the image cut short by one byte; what it expands re-encodes (Write) and
// re-expands to the same bytes; it never allocates more than a constant per chunk of input.
func FuzzExpand(f *testing.F) {
	dir := f.TempDir()
	// A real image from Write: data, zeros, data, trailing zeros.
	raw := filepath.Join(dir, "seed.raw")
	content := make([]byte, 6*BlockSize)
	copy(content, "data block")
	copy(content[3*BlockSize:], "more data")
	if err := os.WriteFile(raw, content, 0o644); err != nil {
		f.Fatal(err)
	}
	rf, err := os.Open(raw)
	if err != nil {
		f.Fatal(err)
	}
	var written bytes.Buffer
	if _, err := Write(context.Background(), &written, rf, int64(len(content))); err != nil {
		f.Fatal(err)
	}
	rf.Close()
	f.Add(written.Bytes())
	addSeeds(f)
	f.Add(image(BlockSize, 1, 0, chunk{0xcac5, 1, nil}))

	out := filepath.Join(dir, "out")
	again := filepath.Join(dir, "again")
	cut := filepath.Join(dir, "cut")
	f.Fuzz(func(t *testing.T, img []byte) {
		size, ok := declared(img)
		if ok && size > 16<<20 {
			return // expanding takes time and disk in proportion to the declared size: that is the format
		}
		dst, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		n, err := expandBytes(t, dst, img)
		if err != nil {
			if n != 0 {
				t.Fatalf("Expand failed (%v) but returned size %d", err, n)
			}
			return
		}
		if !ok || n != size {
			t.Fatalf("Expand returned size %d, the header declares %d", n, size)
		}
		st, err := dst.Stat()
		if err != nil || st.Size() != n {
			t.Fatalf("expanded file has %d bytes (%v), Expand returned %d", st.Size(), err, n)
		}
		// An image cut anywhere before its end is an error, never a success with zeros.
		want, ok := imageLen(img)
		if !ok {
			t.Fatalf("Expand accepted an image shorter than its headers describe")
		}
		if want > 0 {
			dcut, err := os.Create(cut)
			if err != nil {
				t.Fatal(err)
			}
			defer dcut.Close()
			if m, err := Expand(context.Background(), dcut, bytes.NewReader(img[:want-1])); err == nil {
				t.Fatalf("Expand accepted the image without its last byte (size %d)", m)
			}
		}
		if n%BlockSize != 0 {
			return // Write encodes whole 4 KiB blocks only
		}
		var re bytes.Buffer
		if _, err := Write(context.Background(), &re, dst, n); err != nil {
			t.Fatal(err)
		}
		dst2, err := os.Create(again)
		if err != nil {
			t.Fatal(err)
		}
		defer dst2.Close()
		if m, err := Expand(context.Background(), dst2, &re); err != nil || m != n {
			t.Fatalf("re-expanding Write's image: size %d, %v; want %d", m, err, n)
		}
		a, _ := os.ReadFile(out)
		b, _ := os.ReadFile(again)
		if !bytes.Equal(a, b) {
			t.Fatal("Write then Expand changed the expanded bytes")
		}
	})
}

// TestExpandRejectsTruncatedRaw: a raw chunk cut short (an interrupted download) expanded
// "successfully", with zeros for the missing data.
func TestExpandRejectsTruncatedRaw(t *testing.T) {
	dst, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	img := image(BlockSize, 2, 0, chunk{chunkDontCare, 1, nil}, chunk{chunkRaw, 1, bytes.Repeat([]byte{7}, BlockSize)})
	for _, cut := range []int{1, BlockSize / 2, BlockSize} {
		if n, err := Expand(context.Background(), dst, bytes.NewReader(img[:len(img)-cut])); err == nil {
			t.Errorf("Expand of an image missing its last %d bytes succeeded (size %d)", cut, n)
		}
	}
}

// addSeeds adds the hand-made images both fuzz targets start from: every chunk type, a block
// size other than 4 KiB, an empty image, a raw chunk cut short.
func addSeeds(f *testing.F) {
	f.Add(image(BlockSize, 4, 0,
		chunk{chunkRaw, 1, bytes.Repeat([]byte{7}, BlockSize)},
		chunk{chunkFill, 2, []byte{0xde, 0xad, 0xbe, 0xef}},
		chunk{chunkCRC32, 0, []byte{1, 2, 3, 4}},
		chunk{chunkDontCare, 1, nil}))
	f.Add(image(8, 5, 4,
		chunk{chunkFill, 3, []byte{0, 0, 0, 0}},
		chunk{chunkRaw, 1, []byte("12345678")},
		chunk{chunkFill, 1, []byte{1, 0, 0, 1}}))
	f.Add(image(4, 0, 0))
	f.Add(image(BlockSize, 1, 0, chunk{chunkRaw, 1, []byte("short")}))
}
