package sparse

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestOpenReadsLikeExpand: Open reads only the chunk headers; ReadAt at any offset and length
// returns the expanded bytes; Extents cover every non-zero byte and only data chunks.
func TestOpenReadsLikeExpand(t *testing.T) {
	p := sample(t, false)
	img, st := encode(t, p)
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cr := &countingReaderAt{r: bytes.NewReader(img)}
	rd, err := Open(cr, int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if max := int64(fileHeaderLen + st.Chunks*chunkHeadLen); cr.n.Load() > max {
		t.Errorf("Open read %d bytes, more than the %d bytes of headers", cr.n.Load(), max)
	}
	if rd.Size() != int64(len(want)) {
		t.Fatalf("Size = %d, want %d", rd.Size(), len(want))
	}
	got := make([]byte, len(want))
	if n, err := rd.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt whole = %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("ReadAt of the whole image differs from the original")
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 500 {
		off := rng.Int64N(int64(len(want)))
		n := rng.IntN(3*BlockSize) + 1
		buf := bytes.Repeat([]byte{0xaa}, n)
		m, err := rd.ReadAt(buf, off)
		end := min(off+int64(n), int64(len(want)))
		if m != int(end-off) || (end < off+int64(n)) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
		if !bytes.Equal(buf[:m], want[off:end]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs", n, off)
		}
	}
	if n, err := rd.ReadAt(make([]byte, 1), rd.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, EOF", n, err)
	}
	var data int64
	prev := int64(-1)
	for _, e := range rd.Extents() {
		if e.Off <= prev || e.Len <= 0 || e.Off+e.Len > rd.Size() {
			t.Fatalf("extents out of order or range: %+v", rd.Extents())
		}
		prev = e.Off + e.Len
		data += e.Len
		clear(want[e.Off : e.Off+e.Len])
	}
	if data != st.DataBlocks*BlockSize {
		t.Errorf("extents hold %d bytes, the image %d data blocks", data, st.DataBlocks)
	}
	if !bytes.Equal(want, make([]byte, len(want))) {
		t.Error("a non-zero byte lies outside the extents")
	}
}

// TestOpenFillAndRejects: fills read as their pattern (zero fills are holes, not extents), and
// images whose bodies run past the end are refused at Open.
func TestOpenFillAndRejects(t *testing.T) {
	img := image(8, 6, 4,
		chunk{chunkFill, 2, []byte{1, 2, 3, 4}},
		chunk{chunkFill, 1, []byte{0, 0, 0, 0}},
		chunk{chunkCRC32, 0, []byte{9, 9, 9, 9}},
		chunk{chunkRaw, 1, []byte("abcdefgh")},
		chunk{chunkDontCare, 1, nil},
		chunk{chunkFill, 1, []byte{5, 0, 0, 0}})
	rd, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{1, 2, 3, 4}, 4), make([]byte, 8)...)
	want = append(append(append(want, "abcdefgh"...), make([]byte, 8)...), 5, 0, 0, 0, 5, 0, 0, 0)
	got := make([]byte, rd.Size())
	if _, err := rd.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadAt = %v, %v; want %v", got, err, want)
	}
	if e := rd.Extents(); len(e) != 3 || e[0] != (Extent{0, 16}) || e[1] != (Extent{24, 8}) || e[2] != (Extent{40, 8}) {
		t.Errorf("Extents = %+v", e)
	}
	short := image(BlockSize, 2, 0, chunk{chunkDontCare, 1, nil}, chunk{chunkRaw, 1, bytes.Repeat([]byte{7}, BlockSize)})
	for _, cut := range []int{1, BlockSize, BlockSize + chunkHeadLen} {
		if _, err := Open(bytes.NewReader(short), int64(len(short)-cut)); err == nil {
			t.Errorf("Open of an image missing its last %d bytes succeeded", cut)
		}
	}
}

// FuzzOpen: Open accepts exactly what Expand accepts, reads the same bytes, allocates only per
// chunk present, and its extents are ordered, in range, and cover every non-zero byte.
func FuzzOpen(f *testing.F) {
	addSeeds(f)
	f.Add(image(1<<30, 0, 0, chunk{chunkFill, 0, []byte{1, 2, 3, 4}}))
	f.Add(image(0xfffffffc, 1, 0, chunk{chunkDontCare, 0xffffffff, nil}))
	out := filepath.Join(f.TempDir(), "out")
	f.Fuzz(func(t *testing.T, img []byte) {
		size, ok := declared(img)
		if ok && size > 16<<20 {
			return
		}
		var rd *Reader
		var err error
		testenv.MaxAlloc(t, expandAlloc(len(img)), "Open", func() {
			rd, err = Open(bytes.NewReader(img), int64(len(img)))
		})
		dst, derr := os.Create(out)
		if derr != nil {
			t.Fatal(derr)
		}
		defer dst.Close()
		n, xerr := Expand(context.Background(), dst, bytes.NewReader(img))
		if (err == nil) != (xerr == nil) {
			t.Fatalf("Open: %v; Expand: %v", err, xerr)
		}
		if err != nil {
			return
		}
		if rd.Size() != n {
			t.Fatalf("Size %d, Expand %d", rd.Size(), n)
		}
		want, _ := os.ReadFile(out)
		got := make([]byte, n)
		if m, err := rd.ReadAt(got, 0); m != len(got) || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt = %d, %v", m, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("ReadAt differs from Expand")
		}
		prev := int64(-1)
		for _, e := range rd.Extents() {
			if e.Off <= prev || e.Len <= 0 || e.Off+e.Len > n {
				t.Fatalf("extents out of order or range: %+v", rd.Extents())
			}
			prev = e.Off + e.Len
			clear(want[e.Off : e.Off+e.Len])
		}
		if !bytes.Equal(want, make([]byte, len(want))) {
			t.Fatal("a non-zero byte lies outside the extents")
		}
	})
}
