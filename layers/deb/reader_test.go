package deb

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// readDataNames opens deb, reads all of data.tar and returns entry names.
func readDataNames(deb []byte) (*Reader, []string, error) {
	r, err := Open(bytes.NewReader(deb))
	if err != nil {
		return nil, nil, err
	}
	d, err := r.Data()
	if err != nil {
		return r, nil, err
	}
	var names []string
	tr := tar.NewReader(d)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return r, names, nil
		}
		if err != nil {
			return r, names, err
		}
		names = append(names, h.Name)
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return r, names, err
		}
	}
}

func TestOpenCompressions(t *testing.T) {
	exts := []string{"", ".gz", ".xz", ".zst"}
	for _, ce := range exts {
		for _, de := range append(exts, ".bz2") {
			t.Run("control.tar"+ce+"/data.tar"+de, func(t *testing.T) {
				r, names, err := readDataNames(makeDeb(t, ce, de))
				if err != nil {
					t.Fatal(err)
				}
				if got := r.Control().Get("package"); got != "hello" {
					t.Errorf("Package = %q", got)
				}
				p := r.Package()
				if p.Name != "hello" || p.Version != "1:2.10-3+deb12u1" || p.Architecture != "amd64" {
					t.Errorf("Package() = %+v", p)
				}
				if got := r.Control().Folded("Depends"); got != "libc6 (>= 2.34), libfoo1" {
					t.Errorf("Depends = %q", got)
				}
				want := []string{"./", "./usr/", "./usr/bin/", "./usr/bin/hello", "./usr/share/doc/hello/copyright"}
				if !slices.Equal(names, want) {
					t.Errorf("data entries = %q, want %q", names, want)
				}
			})
		}
	}
}

func TestOpenStreamsData(t *testing.T) {
	// Open must not read past control.tar.
	deb := makeDeb(t, ".gz", ".xz")
	cr := &countReader{r: bytes.NewReader(deb)}
	r, err := Open(cr)
	if err != nil {
		t.Fatal(err)
	}
	if cr.n >= int64(len(deb)) {
		t.Errorf("Open read %d of %d bytes; data.tar should be left unread", cr.n, len(deb))
	}
	if _, err := r.Data(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Data(); err == nil {
		t.Error("second Data call succeeded")
	}
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestOpenMemberVariants(t *testing.T) {
	ctl := compress(t, ".gz", makeTar(t, []tarFile{{name: "control", body: testControl}}))
	data := compress(t, ".zst", makeTar(t, testData))
	// GNU-style names with a trailing slash, and an underscore member
	// between control and data, which must be skipped.
	deb := makeAr([]arFile{
		{"debian-binary/", []byte("2.0\n")},
		{"_gpgbuilder", []byte("odd")},
		{"control.tar.gz/", ctl},
		{"_extra", []byte("x")},
		{"data.tar.zst/", data},
		{"_trailing", []byte("ignored")},
	})
	r, names, err := readDataNames(deb)
	if err != nil {
		t.Fatal(err)
	}
	if r.Control().Get("Package") != "hello" || len(names) != len(testData) {
		t.Errorf("control %q, %d entries", r.Control().Get("Package"), len(names))
	}
}

func TestOpenErrors(t *testing.T) {
	good := makeDeb(t, ".gz", ".xz")
	ctl := compress(t, ".gz", makeTar(t, []tarFile{{name: "./control", body: testControl}}))
	data := makeTar(t, testData)
	hdr := func(name, size string) []byte {
		return []byte(strings.Join([]string{padRight(name, 16), padRight("0", 12), padRight("0", 6), padRight("0", 6), padRight("100644", 8), padRight(size, 10), "`\n"}, ""))
	}
	tests := []struct {
		name    string
		deb     []byte
		openErr string // substring of Open's error
		dataErr string // substring of the error from Data or reading it
	}{
		{name: "empty", deb: nil, openErr: "not a Debian package"},
		{name: "text", deb: []byte("hello world, this is not a deb"), openErr: "not a Debian package: missing ar magic"},
		{name: "short magic", deb: []byte("!<ar"), openErr: "missing ar magic"},
		{name: "magic only", deb: []byte(arMagic), openErr: "debian-binary"},
		{name: "tar not ar", deb: data, openErr: "missing ar magic"},
		{name: "truncated header", deb: append([]byte(arMagic), hdr("debian-binary", "4")[:30]...), openErr: "truncated ar member header"},
		{name: "bad fmag", deb: append(append([]byte(arMagic), hdr("debian-binary", "4")[:58]...), "xx2.0\n"...), openErr: "corrupt ar member header"},
		{name: "negative size", deb: append(append([]byte(arMagic), hdr("debian-binary", "-4")...), "2.0\n"...), openErr: "invalid size"},
		{name: "garbage size", deb: append(append([]byte(arMagic), hdr("debian-binary", "4x")...), "2.0\n"...), openErr: "invalid size"},
		{name: "absurd size", deb: append(append([]byte(arMagic), hdr("control.tar", "9999999999")...), "2.0\n"...), openErr: "first member"},
		{name: "huge debian-binary", deb: append(append([]byte(arMagic), hdr("debian-binary", "9999999999")...), "2.0\n"...), openErr: "too large"},
		{name: "huge control", deb: append(makeAr([]arFile{{"debian-binary", []byte("2.0\n")}}), hdr("control.tar.gz", "999999999")...), openErr: "more than"},
		{name: "wrong first member", deb: makeAr([]arFile{{"control.tar.gz", ctl}}), openErr: `first member is "control.tar.gz"`},
		{name: "bad format version", deb: makeAr([]arFile{{"debian-binary", []byte("3.0\n")}, {"control.tar.gz", ctl}}), openErr: "unsupported package format version"},
		{name: "truncated debian-binary", deb: append(append([]byte(arMagic), hdr("debian-binary", "4")...), "2."...), openErr: "truncated member debian-binary"},
		{name: "no control", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}}), openErr: "missing control.tar"},
		{name: "data before control", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"data.tar", data}}), openErr: "expected control.tar member"},
		{name: "control lzma", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.lzma", ctl}}), openErr: "unsupported control.tar member control.tar.lzma"},
		{name: "control corrupt gzip", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl[:len(ctl)/2]}}), openErr: "control.tar.gz"},
		{name: "control without control file", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar", makeTar(t, []tarFile{{name: "./md5sums", body: "x"}})}}), openErr: "has no control file"},
		{name: "control file bad syntax", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar", makeTar(t, []tarFile{{name: "./control", body: "Package hello\n"}})}}), openErr: "missing ':'"},
		{name: "control file no package", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar", makeTar(t, []tarFile{{name: "./control", body: "Version: 1\n"}})}}), openErr: "no Package field"},
		{name: "truncated control", deb: good[:len(arMagic)+60+4+60+20], openErr: "truncated member control.tar.gz"},
		{name: "no data", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}}), dataErr: "missing data.tar member"},
		{name: "data lzma", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}, {"data.tar.lzma", []byte("x")}}), dataErr: "unsupported data.tar member data.tar.lzma"},
		{name: "unexpected member", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}, {"other", []byte("x")}}), dataErr: `expected data.tar member, found "other"`},
		{name: "truncated data", deb: good[:len(good)-40], dataErr: "truncated member data.tar.xz"},
		{name: "truncated plain data", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}, {"data.tar", data}})[:len(arMagic)+60+4+60+len(ctl)+len(ctl)%2+60+700], dataErr: "truncated member data.tar"},
		{name: "corrupt data", deb: makeAr([]arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}, {"data.tar.gz", []byte("\x1f\x8b\x08\x00garbagegarbage")}}), dataErr: "data.tar.gz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readDataNames(tc.deb)
			want := tc.openErr + tc.dataErr
			if err == nil {
				t.Fatalf("no error, want %q", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not contain %q", err, want)
			}
			if tc.openErr != "" {
				if _, err := Open(bytes.NewReader(tc.deb)); err == nil {
					t.Fatalf("Open succeeded, want %q", tc.openErr)
				}
			}
		})
	}
}

func padRight(s string, n int) string { return s + strings.Repeat(" ", n-len(s)) }

func TestCheckXZDict(t *testing.T) {
	small := compress(t, ".xz", []byte("hello"))
	if err := checkXZDict(small); err != nil {
		t.Fatalf("default xz stream rejected: %v", err)
	}
	// Patch the LZMA2 dictionary byte of the first block to 1.5 GiB.
	// Block header: size byte, flags byte, filter id 0x21, props size 1,
	// dict byte (the CRC is not checked by checkXZDict).
	huge := bytes.Clone(small)
	if huge[12+2] != 0x21 || huge[12+3] != 1 {
		t.Fatalf("unexpected block header % x", huge[12:20])
	}
	huge[12+4] = 39
	if err := checkXZDict(huge); err == nil {
		t.Fatal("1.5 GiB dictionary accepted")
	}
	_, err := newXZReader(bytes.NewReader(huge))
	if err == nil || !strings.Contains(err.Error(), "dictionary") {
		t.Fatalf("newXZReader error = %v", err)
	}
}

// TestFinishRefusesSecondData: one package, one data.tar. deb(5) lets readers ignore members
// after data.tar, so a second one would be contents some tools install and others do not.
func TestFinishRefusesSecondData(t *testing.T) {
	ctl := compress(t, ".gz", makeTar(t, []tarFile{{name: "./control", body: testControl}}))
	data := makeTar(t, testData)
	head := []arFile{{"debian-binary", []byte("2.0\n")}, {"control.tar.gz", ctl}}
	for _, tc := range []struct {
		name    string
		members []arFile
		err     string // "" = Finish succeeds
	}{
		{"gz and xz", []arFile{{"data.tar.gz", compress(t, ".gz", data)}, {"data.tar.xz", compress(t, ".xz", data)}}, `deb: two data members, "data.tar.gz" and "data.tar.xz"`},
		{"two plain", []arFile{{"data.tar", data}, {"data.tar", data}}, `deb: two data members, "data.tar" and "data.tar"`},
		{"after an ignored member", []arFile{{"data.tar", data}, {"_sig", []byte("x")}, {"data.tar.zst/", compress(t, ".zst", data)}}, `deb: two data members, "data.tar" and "data.tar.zst"`},
		{"trailing members", []arFile{{"data.tar", data}, {"_sig", []byte("x")}, {"extra", []byte("y")}}, ""},
		{"data only", []arFile{{"data.tar.gz", compress(t, ".gz", data)}}, ""},
		{"truncated after data", nil, "truncated ar member header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := makeAr(append(slices.Clone(head), tc.members...))
			if tc.members == nil {
				b = append(makeAr(append(slices.Clone(head), arFile{"data.tar", data})), "data.tar.gz "...)
			}
			// Read only part of data.tar, as a tar reader stops at the end-of-archive blocks.
			r, err := Open(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			d, err := r.Data()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tar.NewReader(d).Next(); err != nil {
				t.Fatal(err)
			}
			err = r.Finish()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Finish: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Finish: err = %v, want %q", err, tc.err)
			}
		})
	}
	r, err := Open(bytes.NewReader(makeDeb(t, ".gz", ".xz")))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Finish(); err == nil || !strings.Contains(err.Error(), "before Data") {
		t.Errorf("Finish before Data: %v", err)
	}
}
