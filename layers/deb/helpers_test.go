package deb

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

type tarFile struct {
	name, body string
	dir        bool
}

func makeTar(t testing.TB, files []tarFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if f.dir {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compress compresses b with the method named by a member suffix.
func compress(t testing.TB, ext string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch ext {
	case "":
		return b
	case ".gz":
		w = gzip.NewWriter(&buf)
	case ".xz":
		w, err = xz.NewWriter(&buf)
	case ".zst":
		w, err = zstd.NewWriter(&buf)
	case ".bz2":
		testenv.Tools(t, "bzip2")
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	case ".lzma":
		return []byte("not really lzma")
	default:
		t.Fatalf("unknown compression %q", ext)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type arFile struct {
	name string
	body []byte
}

// makeAr writes a common-format ar archive the way dpkg-deb does.
func makeAr(files []arFile) []byte {
	var buf bytes.Buffer
	buf.WriteString(arMagic)
	for _, f := range files {
		fmt.Fprintf(&buf, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", f.name, 0, 0, 0, "100644", len(f.body))
		buf.Write(f.body)
		if len(f.body)%2 == 1 {
			buf.WriteByte('\n')
		}
	}
	return buf.Bytes()
}

const testControl = `Package: hello
Version: 1:2.10-3+deb12u1
Architecture: amd64
Maintainer: Test <test@example.com>
Depends: libc6 (>= 2.34),
 libfoo1
Description: example package
 A longer description
 .
 with a blank line.
`

var testData = []tarFile{
	{name: "./", dir: true},
	{name: "./usr/", dir: true},
	{name: "./usr/bin/", dir: true},
	{name: "./usr/bin/hello", body: "#!/bin/sh\necho hello\n"},
	{name: "./usr/share/doc/hello/copyright", body: "public domain\n"},
}

// makeDeb builds a .deb with the given control and data compression.
func makeDeb(t testing.TB, ctlExt, dataExt string) []byte {
	t.Helper()
	ctl := makeTar(t, []tarFile{{name: "./", dir: true}, {name: "./md5sums", body: "x  usr/bin/hello\n"}, {name: "./control", body: testControl}})
	data := makeTar(t, testData)
	return makeAr([]arFile{
		{"debian-binary", []byte("2.0\n")},
		{"control.tar" + ctlExt, compress(t, ctlExt, ctl)},
		{"data.tar" + dataExt, compress(t, dataExt, data)},
	})
}
