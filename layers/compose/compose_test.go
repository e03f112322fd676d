package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/tarentry"
)

// e is a compact test entry: "f name content", "d name", "l name target" (symlink),
// "h name target" (hard link), "c name" (char device 1,3).
type e string

func mkTar(t testing.TB, entries ...e) Input {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, ent := range entries {
		f := strings.SplitN(string(ent), " ", 3)
		hdr := &tar.Header{Name: f[1], Mode: 0o644, Uname: "someone", ModTime: time.Unix(12345, 0)}
		var body string
		switch f[0] {
		case "f":
			hdr.Typeflag = tar.TypeReg
			if len(f) > 2 {
				body = f[2]
			}
			hdr.Size = int64(len(body))
		case "d":
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o750
		case "l":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f[2]
		case "h":
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, f[2]
		case "c":
			hdr.Typeflag, hdr.Devmajor, hdr.Devminor = tar.TypeChar, 1, 3
		case "x":
			hdr.Typeflag = tar.TypeReg
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x02", "LIBARCHIVE.creationtime": "1"}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	return Input{Name: fmt.Sprintf("test%d", len(entries)), Reader: bytes.NewReader(b), Size: int64(len(b))}
}

// listing renders a tar stream as one line per entry.
func listing(t testing.TB, b []byte, mtime time.Time) []string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(mtime) || hdr.Uname != "" {
			t.Errorf("%s: not normalized: mtime %v uname %q", hdr.Name, hdr.ModTime, hdr.Uname)
		}
		body, _ := io.ReadAll(tr)
		var s string
		switch hdr.Typeflag {
		case tar.TypeReg:
			s = fmt.Sprintf("f %s %s", hdr.Name, body)
		case tar.TypeDir:
			s = fmt.Sprintf("d %s %o", hdr.Name, hdr.Mode)
		case tar.TypeSymlink:
			s = fmt.Sprintf("l %s %s", hdr.Name, hdr.Linkname)
		case tar.TypeLink:
			s = fmt.Sprintf("h %s %s", hdr.Name, hdr.Linkname)
		case tar.TypeChar:
			s = fmt.Sprintf("c %s %d,%d", hdr.Name, hdr.Devmajor, hdr.Devminor)
		}
		for k, v := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") || strings.HasPrefix(k, "LIBARCHIVE") {
				s += fmt.Sprintf(" %s=%q", k, v)
			}
		}
		out = append(out, strings.TrimSpace(s))
	}
}

func TestCompose(t *testing.T) {
	mtime := time.Unix(1700000000, 0).UTC()
	tests := []struct {
		name   string
		mode   Mode
		layers [][]e
		want   []string
		err    string
	}{
		{
			name:   "sorted, normalized, parents synthesized",
			layers: [][]e{{"f usr/bin/b B", "f usr/bin/a A", "d etc", "f ./etc/x X"}},
			want:   []string{"d ./ 755", "d etc/ 750", "f etc/x X", "d usr/ 755", "d usr/bin/ 755", "f usr/bin/a A", "f usr/bin/b B"},
		},
		{
			name:   "upper file replaces lower, later entry in one layer wins",
			layers: [][]e{{"f a 1"}, {"f a 2", "f a 3"}},
			want:   []string{"d ./ 755", "f a 3"},
		},
		{
			name:   "whiteout removes file and directory subtree",
			layers: [][]e{{"f a 1", "d d", "f d/x x", "f d/y y"}, {"f .wh.a", "f .wh.d"}},
			want:   []string{"d ./ 755"},
		},
		{
			name:   "whiteout hides only lower layers",
			layers: [][]e{{"f a 1"}, {"f a 2", "f .wh.a"}},
			want:   []string{"d ./ 755", "f a 2"},
		},
		{
			name:   "opaque directory drops lower children only",
			layers: [][]e{{"d d", "f d/x x", "d d/sub", "f d/sub/y y"}, {"d d", "d d/sub", "f d/.wh..wh..opq", "f d/new n"}},
			want:   []string{"d ./ 755", "d d/ 750", "f d/new n", "d d/sub/ 750"},
		},
		{
			name:   "merged /usr: directory over a directory symlink keeps the symlink",
			layers: [][]e{{"d usr", "d usr/bin", "l bin usr/bin"}, {"d bin", "f bin/ls LS"}},
			want:   []string{"d ./ 755", "l bin usr/bin", "d usr/ 750", "d usr/bin/ 750", "f usr/bin/ls LS"},
		},
		{
			name:   "absolute symlinks resolve inside the root",
			layers: [][]e{{"d real", "l lib /real"}, {"f lib/mod M"}},
			want:   []string{"d ./ 755", "l lib /real", "d real/ 750", "f real/mod M"},
		},
		{
			name:   "hard link sorted before its target becomes the file",
			layers: [][]e{{"f z/file DATA", "h a/link z/file"}},
			want:   []string{"d ./ 755", "d a/ 755", "f a/link DATA", "d z/ 755", "h z/file a/link"},
		},
		{
			name:   "hard link to a lower layer survives the target's replacement",
			layers: [][]e{{"f t OLD"}, {"h l t", "f t NEW"}},
			want:   []string{"d ./ 755", "f l OLD", "f t NEW"},
		},
		{
			name:   "file replaces directory, directory replaces file",
			layers: [][]e{{"d a", "f a/x x", "f b B"}, {"f a A", "d b", "f b/y y"}},
			want:   []string{"d ./ 755", "f a A", "d b/ 750", "f b/y y"},
		},
		{
			name:   "devices and xattrs kept, other PAX records dropped",
			layers: [][]e{{"c dev/null", "x bin/ping"}},
			want:   []string{"d ./ 755", "d bin/ 755", `f bin/ping  SCHILY.xattr.security.capability="\x01\x02"`, "d dev/ 755", "c dev/null 1,3"},
		},
		{
			name:   "layer mode keeps whiteouts and omits implicit parents",
			mode:   Layer,
			layers: [][]e{{"f a/b/c C"}, {"f a/.wh.gone", "f a/b/.wh..wh..opq"}},
			want:   []string{"f a/.wh.gone", "f a/b/.wh..wh..opq"},
		},
		{
			name:   "layer mode: directory re-added after whiteout is opaque",
			mode:   Layer,
			layers: [][]e{{"f .wh.d"}, {"d d", "f d/x X"}},
			want:   []string{"d d/ 750", "f d/.wh..wh..opq", "f d/x X"},
		},
		{name: "parent traversal rejected", layers: [][]e{{"f ../etc/passwd x"}}, err: `".." path component`},
		{name: "absolute path rejected", layers: [][]e{{"f /etc/passwd x"}}, err: "absolute path"},
		{name: "symlink escape rejected", layers: [][]e{{"l a/b ../../etc"}}, err: "symlink target escapes the root"},
		{name: "hard link escape rejected", layers: [][]e{{"h a ../../etc/shadow"}}, err: "hard link target escapes the root"},
		{name: "hard link to missing target", layers: [][]e{{"h a nowhere"}}, err: `hard link target "nowhere"`},
		{name: "symlink loop", layers: [][]e{{"l a b", "l b a", "f a/x x"}}, err: "too many levels of symbolic links"},
		{
			name:   "symlink chain placing a symlink at the root that climbs above it",
			layers: [][]e{{"d a", "l a/lnk ..", "l a/lnk/lnk2 ..", "f a/lnk/lnk2/etc/passwd x"}},
			err:    `layer test4: unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`,
		},
		{
			name:   "the error names the entry as the archive spells it",
			layers: [][]e{{"l ./a/lnk ..", "l ./a/lnk//lnk2 ../x"}},
			err:    `layer test2: unsafe tar entry "./a/lnk//lnk2" -> "../x": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`,
		},
		{
			name:   "symlink chain through an absolute symlink",
			layers: [][]e{{"d a", "d b", "l a/up /", "l b/x ../a/up/y", "l a/up/z ../../etc"}},
			err:    `unsafe tar entry "a/up/z" -> "../../etc": symlink target escapes the root (its directory "a/up" resolves to "/" through symlinks)`,
		},
		{
			name:   "symlink in a lower layer, escaping symlink through it in an upper one",
			layers: [][]e{{"d a", "l a/lnk .."}, {"l a/lnk/lnk2 .."}},
			err:    `layer test1: unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`,
		},
		{
			name:   "layer mode refuses the same chains",
			mode:   Layer,
			layers: [][]e{{"d a", "l a/lnk .."}, {"l a/lnk/lnk2 .."}},
			err:    `layer test1: unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root`,
		},
		{
			name:   "a file through a lower layer's symlink lands where the symlink points",
			layers: [][]e{{"d a", "l a/lnk .."}, {"f a/lnk/etc/passwd P", "l a/lnk/etc/ok ../x"}},
			want:   []string{"d ./ 755", "d a/ 750", "l a/lnk ..", "d etc/ 755", "l etc/ok ../x", "f etc/passwd P"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var inputs []Input
			for _, l := range tc.layers {
				inputs = append(inputs, mkTar(t, l...))
			}
			var out bytes.Buffer
			res, err := Compose(context.Background(), &out, inputs, Options{Mode: tc.mode, MTime: mtime})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				var ue *tarentry.UnsafeError
				if strings.Contains(tc.err, "escape") && !errors.As(err, &ue) {
					t.Errorf("err = %T, want an UnsafeError in the chain", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := listing(t, out.Bytes(), mtime)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if res.Entries != len(got) {
				t.Errorf("Entries = %d, want %d", res.Entries, len(got))
			}
		})
	}
}

func TestComposeDeterministic(t *testing.T) {
	in := []Input{mkTar(t, "f b 2", "f a 1", "d c", "l c/l ../a"), mkTar(t, "f c/z zz", "h c/h a")}
	var first []byte
	for i := 0; i < 3; i++ {
		var out bytes.Buffer
		if _, err := Compose(context.Background(), &out, in, Options{MTime: time.Unix(1, 0)}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = out.Bytes()
		} else if !bytes.Equal(first, out.Bytes()) {
			t.Fatal("two composes of the same input differ")
		}
	}
}

func TestComposeTruncatedLayer(t *testing.T) {
	in := mkTar(t, "f a 0123456789")
	in.Size = 512 + 5 // header plus half the content
	_, err := Compose(context.Background(), io.Discard, []Input{in}, Options{})
	if err == nil {
		t.Fatal("compose of a truncated layer succeeded")
	}
}

func TestComposeCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Compose(ctx, io.Discard, []Input{mkTar(t, "f a 1")}, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func FuzzCompose(f *testing.F) {
	seed := mkTar(f, "d a", "f a/b x", "l c a", "h d a/b", "f c/.wh.b")
	b := make([]byte, seed.Size)
	_, _ = seed.Reader.ReadAt(b, 0)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		in := Input{Name: "fuzz", Reader: bytes.NewReader(data), Size: int64(len(data))}
		var out bytes.Buffer
		if _, err := Compose(context.Background(), &out, []Input{in, in}, Options{}); err != nil {
			return
		}
		// Whatever was accepted must be a readable tar with only safe names.
		tr := tar.NewReader(&out)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				t.Fatalf("composed output unreadable: %v", err)
			}
			if strings.HasPrefix(hdr.Name, "/") || strings.Contains("/"+hdr.Name+"/", "/../") {
				t.Fatalf("unsafe name in output: %q", hdr.Name)
			}
		}
	})
}

// BenchmarkCompose composes 5 synthetic layers (2,000 files of 32 KiB each, with overrides)
// into a discarded stream; make bench runs the real 5-layer node comparison against GNU tar.
func BenchmarkCompose(b *testing.B) {
	body := strings.Repeat("x", 32<<10)
	var inputs []Input
	for l := 0; l < 5; l++ {
		var ents []e
		for i := 0; i < 400; i++ {
			ents = append(ents, e(fmt.Sprintf("f usr/lib/l%d/d%02d/file%03d %s", l%3, i%20, i, body)))
		}
		inputs = append(inputs, mkTar(b, ents...))
	}
	var total int64
	for _, in := range inputs {
		total += in.Size
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Compose(context.Background(), io.Discard, inputs, Options{MTime: time.Unix(1700000000, 0)}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestComposeFinalize(t *testing.T) {
	in := []Input{
		mkTar(t, "f usr/bin/a lower", "f usr/bin/gone x", "f etc/conf c"),
		mkTar(t, "f usr/bin/a upper", "f usr/bin/.wh.gone", "h usr/bin/b usr/bin/a"),
	}
	var seen []string
	var out bytes.Buffer
	_, err := Compose(context.Background(), &out, in, Options{MTime: time.Unix(1, 0),
		Finalize: func(ctx context.Context, files *Files) ([]Generated, error) {
			var list []string
			err := files.Walk(func(f File) error {
				body, err := io.ReadAll(f.Content)
				seen = append(seen, fmt.Sprintf("%s=%s@%d", f.Path, body, f.Input))
				list = append(list, f.Path)
				return err
			})
			return []Generated{{Path: "etc/imgctl/files", Mode: 0o644, Data: []byte(strings.Join(list, ","))}}, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	wantSeen := []string{"etc/conf=c@0", "usr/bin/a=upper@1", "usr/bin/b=upper@1"}
	if !slices.Equal(seen, wantSeen) {
		t.Errorf("Finalize saw %q, want %q", seen, wantSeen)
	}
	got := listing(t, out.Bytes(), time.Unix(1, 0))
	want := []string{"d ./ 755", "d etc/ 755", "f etc/conf c", "d etc/imgctl/ 755", "f etc/imgctl/files etc/conf,usr/bin/a,usr/bin/b",
		"d usr/ 755", "d usr/bin/ 755", "f usr/bin/a upper", "h usr/bin/b usr/bin/a"}
	if !slices.Equal(got, want) {
		t.Errorf("composed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	boom := errors.New("boom")
	_, err = Compose(context.Background(), io.Discard, in, Options{
		Finalize: func(context.Context, *Files) ([]Generated, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Errorf("Finalize error not returned: %v", err)
	}
}

// Index lists the regular files Compose would write, by canonical path and supplying input:
// through a lower layer's symlinked directory (merged /usr), after whiteouts and overrides.
func TestIndex(t *testing.T) {
	in := []Input{
		mkTar(t, "d usr", "d usr/lib", "l lib usr/lib", "f usr/lib/libc base", "f etc/gone x"),
		mkTar(t, "d lib", "d lib/modules", "f lib/modules/a.ko A", "h lib/modules/b.ko lib/modules/a.ko", "f etc/.wh.gone", "f usr/lib/libc new"),
	}
	files, err := Index(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	err = files.Walk(func(f File) error {
		seen = append(seen, fmt.Sprintf("%s@%d", f.Path, f.Input))
		return nil
	})
	if want := []string{"usr/lib/libc@1", "usr/lib/modules/a.ko@1", "usr/lib/modules/b.ko@1"}; err != nil || !slices.Equal(seen, want) {
		t.Errorf("Index walks %q (%v), want %q", seen, err, want)
	}
	if _, err := Index(context.Background(), []Input{{Name: "cut", Reader: bytes.NewReader(make([]byte, 100)), Size: 100}}); err == nil || !strings.Contains(err.Error(), "layer cut") {
		t.Errorf("a broken layer: err = %v, want one naming it", err)
	}
}

// checkAll runs a Checker over the entries of in, cleaning each header as sources do.
func checkAll(t *testing.T, in Input) error {
	t.Helper()
	c := NewChecker()
	return tarentry.Each(context.Background(), io.NewSectionReader(in.Reader, 0, in.Size), func(hdr *tar.Header, _ io.Reader) error {
		orig := hdr.Name
		if err := tarentry.Clean(hdr); err != nil {
			return err
		}
		return c.Add(orig, hdr)
	})
}

// TestChecker: a layer alone is refused with the very error Compose gives for it.
func TestChecker(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []e
		err     string
	}{
		{"symlink chain", []e{"d a", "l a/lnk ..", "l a/lnk/lnk2 ..", "f a/lnk/lnk2/etc/passwd x"}, `unsafe tar entry "a/lnk/lnk2" -> "..": symlink target escapes the root (its directory "a/lnk" resolves to "/" through symlinks)`},
		{"whiteout of ..", []e{"d x", "f x/.wh..."}, `unsafe tar entry "x/.wh...": whiteout of ".." (it must name a file of the directory)`},
		{"symlink loop", []e{"l a b", "l b a", "f a/x x"}, `entry "a/x": too many levels of symbolic links`},
		{"root not a directory", []e{"l ./ x"}, `entry "./": root entry is not a directory`},
		{"hard link to a directory", []e{"d d", "h l d"}, `entry "l": hard link target "d" is not a regular file in this or a lower layer`},
		{"lexical escape", []e{"l a/b ../../x"}, `unsafe tar entry "a/b" -> "../../x": symlink target escapes the root`},
		{"fine", []e{"d a", "l a/lnk ..", "f a/lnk/etc/x x", "h a/h etc/x"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mkTar(t, tc.entries...)
			err := checkAll(t, in)
			_, cerr := Compose(context.Background(), io.Discard, []Input{in}, Options{Mode: Layer})
			if tc.err == "" {
				if err != nil || cerr != nil {
					t.Fatalf("Checker: %v, Compose: %v; want both to accept", err, cerr)
				}
				return
			}
			if err == nil || err.Error() != tc.err {
				t.Fatalf("Checker: err = %v, want %q", err, tc.err)
			}
			if cerr == nil || cerr.Error() != "layer "+in.Name+": "+tc.err {
				t.Errorf("Compose: err = %v, want %q", cerr, "layer "+in.Name+": "+tc.err)
			}
		})
	}
	// A hard link may name a file of a lower layer: only Compose, seeing every layer, can tell.
	if err := checkAll(t, mkTar(t, "h a lower/file")); err != nil {
		t.Errorf("Checker refused a hard link into a lower layer: %v", err)
	}
}
