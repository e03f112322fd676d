package deb

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"
)

func FuzzOpen(f *testing.F) {
	// Small seeds keep minimization cheap: one control file, one data file.
	ctl := makeTar(f, []tarFile{{name: "./control", body: "Package: p\nVersion: 1\n"}})
	data := makeTar(f, []tarFile{{name: "./usr/bin/p", body: "x"}})
	for _, c := range [][2]string{{"", ""}, {".gz", ".xz"}, {".xz", ".zst"}, {".zst", ".gz"}, {".gz", ".bz2"}} {
		f.Add(makeAr([]arFile{
			{"debian-binary", []byte("2.0\n")},
			{"control.tar" + c[0], compress(f, c[0], ctl)},
			{"data.tar" + c[1], compress(f, c[1], data)},
		}))
	}
	f.Add([]byte(arMagic))
	f.Add([]byte("!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Open(bytes.NewReader(b))
		if err != nil {
			return
		}
		if r.Control().Get("Package") == "" {
			t.Fatal("Open accepted a control file without Package")
		}
		d, err := r.Data()
		if err != nil {
			return
		}
		tr := tar.NewReader(d)
		for {
			_, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return
			}
		}
		_ = r.Finish() // must not panic or hang on whatever follows data.tar
	})
}

func FuzzParseParagraphs(f *testing.F) {
	f.Add([]byte(testControl))
	f.Add([]byte(testPackages))
	f.Add([]byte("A: 1\r\n b\r\n\r\n\r\nB:2\n# c\n"))
	f.Add([]byte(" x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for p, err := range ParseParagraphs(bytes.NewReader(b)) {
			if err != nil {
				if p != nil {
					t.Fatal("paragraph returned with error")
				}
				return
			}
			if len(p) == 0 {
				t.Fatal("empty paragraph yielded")
			}
			for _, fl := range p {
				if got := p.Get(fl.Name); got != fl.Value {
					t.Fatalf("Get(%q) = %q, field value %q", fl.Name, got, fl.Value)
				}
				if !validFieldName(fl.Name) {
					t.Fatalf("invalid field name %q accepted", fl.Name)
				}
			}
		}
	})
}
