package tarentry

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestClean(t *testing.T) {
	tests := []struct {
		hdr      tar.Header
		name     string // cleaned name
		linkname string
		err      string
	}{
		{hdr: tar.Header{Name: "./usr/bin/", Typeflag: tar.TypeDir}, name: "usr/bin"},
		{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir}, name: ""},
		{hdr: tar.Header{Name: "a//b/./c", Typeflag: tar.TypeReg}, name: "a/b/c"},
		{hdr: tar.Header{Name: "/etc/passwd", Typeflag: tar.TypeReg}, err: "absolute path"},
		{hdr: tar.Header{Name: "a/../../x", Typeflag: tar.TypeReg}, err: `".." path component`},
		{hdr: tar.Header{Name: "usr/lib/x", Typeflag: tar.TypeSymlink, Linkname: "../../lib/x"}, name: "usr/lib/x", linkname: "../../lib/x"},
		{hdr: tar.Header{Name: "usr/lib/x", Typeflag: tar.TypeSymlink, Linkname: "../../../x"}, err: "escapes the root"},
		{hdr: tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "/usr/bin"}, name: "bin", linkname: "/usr/bin"},
		{hdr: tar.Header{Name: "bin", Typeflag: tar.TypeSymlink}, err: "empty target"},
		{hdr: tar.Header{Name: "./a", Typeflag: tar.TypeLink, Linkname: "./b/c"}, name: "a", linkname: "b/c"},
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}, err: "hard link to an absolute path"},
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeLink, Linkname: "../x"}, err: "escapes the root"},
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeXGlobalHeader}, err: "unsupported entry type"},
		{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Size: -1}, err: "negative size"},
		// Whiteouts: only a nameable file may be hidden, and a whiteout is never a directory.
		{hdr: tar.Header{Name: "x/.wh.y", Typeflag: tar.TypeReg}, name: "x/.wh.y"},
		{hdr: tar.Header{Name: "x/.wh..wh..opq", Typeflag: tar.TypeReg}, name: "x/.wh..wh..opq"},
		{hdr: tar.Header{Name: "x/.wh...", Typeflag: tar.TypeReg}, err: `unsafe tar entry "x/.wh...": whiteout of ".." (it must name a file of the directory)`},
		{hdr: tar.Header{Name: "x/.wh..", Typeflag: tar.TypeReg}, err: `whiteout of "."`},
		{hdr: tar.Header{Name: ".wh.", Typeflag: tar.TypeReg}, err: `whiteout of ""`},
		{hdr: tar.Header{Name: "x/.wh.y/z", Typeflag: tar.TypeReg}, err: `unsafe tar entry "x/.wh.y/z": whiteout name ".wh.y" used as a directory`},
		{hdr: tar.Header{Name: "./.wh..wh..opq/", Typeflag: tar.TypeDir}, name: ".wh..wh..opq"},
	}
	for _, tc := range tests {
		t.Run(tc.hdr.Name, func(t *testing.T) {
			hdr := tc.hdr
			err := Clean(&hdr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if hdr.Name != tc.name || hdr.Linkname != tc.linkname {
				t.Errorf("got %q -> %q, want %q -> %q", hdr.Name, hdr.Linkname, tc.name, tc.linkname)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	hdr := tar.Header{Name: "d", Typeflag: tar.TypeDir, Mode: 0o40755 | 0o1000, Uname: "root", Gname: "root",
		Uid: 7, Gid: 8, ModTime: time.Now(), AccessTime: time.Now(),
		PAXRecords: map[string]string{"SCHILY.xattr.user.x": "1", "atime": "2"}}
	mt := time.Unix(1700000000, 0)
	Normalize(&hdr, mt)
	if hdr.Name != "d/" || hdr.Mode != 0o1755 || hdr.Uname != "" || hdr.Uid != 7 || !hdr.ModTime.Equal(mt) ||
		!hdr.AccessTime.IsZero() || len(hdr.PAXRecords) != 1 {
		t.Errorf("not normalized: %+v", hdr)
	}
}

func TestEach(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"a", "b"} {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
		tw.Write([]byte(name))
	}
	tw.Close()
	var got []string
	err := Each(context.Background(), bytes.NewReader(buf.Bytes()), func(h *tar.Header, r io.Reader) error {
		b, err := io.ReadAll(r)
		got = append(got, h.Name+"="+string(b))
		return err
	})
	if err != nil || strings.Join(got, ",") != "a=a,b=b" {
		t.Fatalf("Each: %v %q", err, got)
	}
	stop := errors.New("stop")
	if err := Each(context.Background(), bytes.NewReader(buf.Bytes()), func(*tar.Header, io.Reader) error { return stop }); err != stop {
		t.Errorf("fn error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Each(ctx, bytes.NewReader(buf.Bytes()), func(*tar.Header, io.Reader) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if err := Each(context.Background(), bytes.NewReader(buf.Bytes()[:1124]), func(*tar.Header, io.Reader) error { return nil }); err == nil || !strings.Contains(err.Error(), "reading tar") {
		t.Errorf("truncated: %v", err)
	}
}

func TestLinkEscapes(t *testing.T) {
	for _, tc := range []struct {
		dir, target string
		want        bool
	}{
		{"", "..", true},
		{"", "x/../..", true},
		{"", "x/..", false},
		{"a", "..", false},
		{"a", "../..", true},
		{"a/b", "../../c", false},
		{"a/b", "./../../../c", true},
		{"a", "/..", false}, // absolute targets resolve inside the root
	} {
		if got := LinkEscapes(tc.dir, tc.target); got != tc.want {
			t.Errorf("LinkEscapes(%q, %q) = %v, want %v", tc.dir, tc.target, got, tc.want)
		}
	}
}
