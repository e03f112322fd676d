package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

func TestTar(t *testing.T) {
	tr := tar.NewReader(bytes.NewReader(Tar(t, "./d/", "d/f", "d/s -> ../x", "d/h => d/f")))
	want := []struct {
		name, link string
		typ        byte
		size       int64
	}{
		{"./d/", "", tar.TypeDir, 0},
		{"d/f", "", tar.TypeReg, 1},
		{"d/s", "../x", tar.TypeSymlink, 0},
		{"d/h", "d/f", tar.TypeLink, 0},
	}
	for _, w := range want {
		h, err := tr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != w.name || h.Linkname != w.link || h.Typeflag != w.typ || h.Size != w.size {
			t.Errorf("entry %+v, want %+v", h, w)
		}
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("after the entries: %v, want EOF", err)
	}
}
