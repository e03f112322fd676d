package sparse

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// sample writes a 64 MiB file with data at a few places, holes elsewhere, and an explicitly
// written zero block; dense writes the same content without holes.
func sample(t *testing.T, dense bool) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if dense {
		zero := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(zero)) {
			f.WriteAt(zero, off)
		}
	}
	data := make([]byte, 3*BlockSize+100)
	for i := range data {
		data[i] = byte(rand.New(rand.NewPCG(1, uint64(i))).Uint32())
	}
	for _, off := range []int64{0, 1 << 20, 5<<20 + 512, size - BlockSize} {
		n := min(int64(len(data)), size-off)
		if _, err := f.WriteAt(data[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	f.WriteAt(make([]byte, BlockSize), 10<<20) // zeros written as data
	return p
}

func encode(t *testing.T, p string) ([]byte, Stats) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var buf bytes.Buffer
	s, err := Write(context.Background(), &buf, f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), s
}

func TestRoundTripAndDeterminism(t *testing.T) {
	sparseFile, denseFile := sample(t, false), sample(t, true)
	a, st := encode(t, sparseFile)
	b, _ := encode(t, denseFile)
	if !bytes.Equal(a, b) {
		t.Fatal("the same content with and without holes encodes differently")
	}
	if st.DataBlocks > 20 || len(a) > 100<<10 {
		t.Errorf("image stores %d data blocks in %d bytes: zero blocks were stored", st.DataBlocks, len(a))
	}
	want, _ := os.ReadFile(sparseFile)
	out := filepath.Join(t.TempDir(), "expanded.raw")
	f, _ := os.Create(out)
	n, err := Expand(context.Background(), f, bytes.NewReader(a))
	f.Close()
	if err != nil || n != int64(len(want)) {
		t.Fatalf("Expand = %d, %v", n, err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, want) {
		t.Fatal("expanded image differs from the original")
	}
	// Oracle: Android's simg2img reads our image.
	if _, err := exec.LookPath("simg2img"); err == nil {
		simg := filepath.Join(t.TempDir(), "disk.simg")
		os.WriteFile(simg, a, 0o644)
		raw := filepath.Join(t.TempDir(), "simg2img.raw")
		if out, err := exec.Command("simg2img", simg, raw).CombinedOutput(); err != nil {
			t.Fatalf("simg2img: %v %s", err, out)
		}
		if got, _ := os.ReadFile(raw); !bytes.Equal(got, want) {
			t.Error("simg2img's expansion differs from the original")
		}
		// And we read img2simg's output.
		ours := filepath.Join(t.TempDir(), "img2simg.simg")
		if out, err := exec.Command("img2simg", sparseFile, ours).CombinedOutput(); err != nil {
			t.Fatalf("img2simg: %v %s", err, out)
		}
		in, _ := os.Open(ours)
		defer in.Close()
		out2 := filepath.Join(t.TempDir(), "from-img2simg.raw")
		f2, _ := os.Create(out2)
		if _, err := Expand(context.Background(), f2, in); err != nil {
			t.Fatalf("expanding img2simg's image: %v", err)
		}
		f2.Close()
		if got, _ := os.ReadFile(out2); !bytes.Equal(got, want) {
			t.Error("our expansion of img2simg's image differs")
		}
	} else {
		t.Log("simg2img not installed: oracle skipped")
	}
}

func TestExpandRejectsGarbage(t *testing.T) {
	f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
	defer f.Close()
	for _, in := range [][]byte{nil, []byte("not a sparse image at all, no"), append([]byte{0x3a, 0xff, 0x26, 0xed, 9, 0}, make([]byte, 22)...)} {
		if _, err := Expand(context.Background(), f, bytes.NewReader(in)); err == nil {
			t.Errorf("Expand(%q) succeeded", in)
		}
	}
}
