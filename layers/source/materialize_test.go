package source

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/tarentry/tartest"
)

// testDeb writes a Debian package whose ar members are debian-binary, control.tar and then
// the given members (name, content).
func testDeb(t *testing.T, members ...string) []byte {
	t.Helper()
	var ctl []byte
	{
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		body := "Package: p\nVersion: 1\nArchitecture: amd64\n"
		tw.WriteHeader(&tar.Header{Name: "./control", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
		tw.Close()
		ctl = buf.Bytes()
	}
	return tartest.Ar(append([]string{"debian-binary", "2.0\n", "control.tar", string(ctl)}, members...)...)
}

// TestMaterializeRefuses: what composing a source would refuse, materializing it (what
// `layers inspect` runs) refuses, naming the URI and the entry as the source spells it.
func TestMaterializeRefuses(t *testing.T) {
	data := tartest.Tar(t, "./usr/", "./usr/x")
	for _, tc := range []struct {
		file string
		frag string
		body []byte
		err  string // after "URI: "
	}{
		{file: "wh.tar", body: tartest.Tar(t, "x/", "x/.wh..."),
			err: `unsafe tar entry "x/.wh...": whiteout of ".." (it must name a file of the directory)`},
		{file: "whdir.tar", body: tartest.Tar(t, "x/.wh.y/", "x/.wh.y/z"),
			err: `unsafe tar entry "x/.wh.y/z": whiteout name ".wh.y" used as a directory`},
		{file: "chain.tar", body: tartest.Tar(t, "a/", "a/lnk -> ..", "a/lnk/lnk2 -> ..", "a/lnk/lnk2/etc/passwd"),
			err: `unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`},
		{file: "chain-dot.tar.gz", body: gzipped(t, tartest.Tar(t, "./a/lnk -> /", "./a/lnk/b -> ../x")),
			err: `unsafe tar entry "./a/lnk/b" -> "../x": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`},
		{file: "chain-prefix.tar", frag: "#prefix=/opt", body: tartest.Tar(t, "a/lnk -> ..", "a/lnk/b -> ../../x"),
			err: `unsafe tar entry "a/lnk/b" -> "../../x": symlink target escapes the root (its directory "opt/a/lnk" resolves to "/opt" through symlinks)`},
		{file: "loop.tar", body: tartest.Tar(t, "a -> b", "b -> a", "a/x"),
			err: `entry "a/x": too many levels of symbolic links`},
		{file: "hardlink-dir.tar", body: tartest.Tar(t, "d/", "l => d"),
			err: `entry "l": hard link target "d" is not a regular file in this or a lower layer`},
		{file: "empty.tar", body: nil, err: `the file is empty (0 bytes), not a valid tar`},
		{file: "empty.tar.gz", body: nil, err: `the file is empty (0 bytes), not a valid tar`},
		{file: "nothing.tar.gz", body: gzipped(t, nil), err: `it decompresses to nothing, not a valid tar`},
		{file: "two-data.deb", body: testDeb(t, "data.tar.gz", string(gzipped(t, data)), "data.tar.xz", "xz"),
			err: `deb: two data members, "data.tar.gz" and "data.tar.xz"`},
		{file: "two-plain-data.deb", body: testDeb(t, "data.tar", string(data), "_sig", "x", "data.tar", string(data)),
			err: `deb: two data members, "data.tar" and "data.tar"`},
		{file: "wh.deb", body: testDeb(t, "data.tar", string(tartest.Tar(t, "./x/", "./x/.wh.."))),
			err: `unsafe tar entry "./x/.wh..": whiteout of "."`},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ctx := context.Background()
			env := newTestEnv(t)
			p := filepath.Join(t.TempDir(), tc.file)
			if err := os.WriteFile(p, tc.body, 0o644); err != nil {
				t.Fatal(err)
			}
			u, err := Parse("file://" + p + tc.frag)
			if err != nil {
				t.Fatal(err)
			}
			pin, err := env.Resolve(ctx, u, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = env.Materialize(ctx, u, pin)
			if want := u.Raw + ": " + tc.err; err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("err = %v, want %q", err, want)
			}
		})
	}
}

// TestMaterializeAccepts: symlinks a source may follow, and an empty archive that is a
// valid tar.
func TestMaterializeAccepts(t *testing.T) {
	for _, tc := range []struct {
		file    string
		body    []byte
		entries int
	}{
		{"through.tar", tartest.Tar(t, "a/", "a/lnk -> ..", "a/lnk/etc/x", "a/lnk/etc/y -> ../x", "h => a/lnk/etc/x"), 5},
		{"merged-usr.tar", tartest.Tar(t, "usr/bin/", "bin -> usr/bin", "bin/", "bin/sh"), 4},
		{"no-entries.tar", tartest.Tar(t), 0},
		{"one.deb", testDeb(t, "data.tar", string(tartest.Tar(t, "./usr/", "./usr/x")), "_trailing", "x"), 2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ctx := context.Background()
			env := newTestEnv(t)
			p := filepath.Join(t.TempDir(), tc.file)
			if err := os.WriteFile(p, tc.body, 0o644); err != nil {
				t.Fatal(err)
			}
			u, err := Parse("file://" + p)
			if err != nil {
				t.Fatal(err)
			}
			pin, err := env.Resolve(ctx, u, nil)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := env.Materialize(ctx, u, pin)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Entries != tc.entries {
				t.Errorf("%d entries, want %d", tr.Entries, tc.entries)
			}
		})
	}
}
