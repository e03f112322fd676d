package deb

import (
	"strings"
	"testing"
)

func TestParseParagraphs(t *testing.T) {
	in := "# comment\r\n\r\n\r\nPackage: a\r\nVersion: 1.0\r\nDescription: short\r\n long line one\r\n .\r\n\tline two  \r\n" +
		"Depends: x (>= 1),\r\n y | z\r\n   \r\n \t\r\n" +
		"package: b\nversion:2.0\nSHA256:\n abc 12 main/Packages\n def 34 main/Packages.xz\n\n\n" +
		"Package: c\nEmpty:\nVersion: 3" // no final newline
	ps, err := ReadParagraphs(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("got %d paragraphs: %q", len(ps), ps)
	}
	a, b, c := ps[0], ps[1], ps[2]
	checks := []struct{ got, want string }{
		{a.Get("PACKAGE"), "a"},
		{a.Get("version"), "1.0"},
		{a.Get("Description"), "short\nlong line one\n.\nline two"},
		{a.Get("Depends"), "x (>= 1),\ny | z"},
		{a.Folded("Depends"), "x (>= 1), y | z"},
		{a.Get("Missing"), ""},
		{b.Get("Package"), "b"},
		{b.Get("Version"), "2.0"},
		{b.Get("SHA256"), "\nabc 12 main/Packages\ndef 34 main/Packages.xz"},
		{c.Get("Version"), "3"},
		{c.Get("Empty"), ""},
	}
	for i, c := range checks {
		if c.got != c.want {
			t.Errorf("check %d: got %q, want %q", i, c.got, c.want)
		}
	}
	if _, ok := c.Lookup("empty"); !ok {
		t.Error("Lookup(empty) not found")
	}
	if b[0].Name != "package" {
		t.Errorf("field name case not preserved: %q", b[0].Name)
	}
	var names []string
	for _, f := range a {
		names = append(names, f.Name)
	}
	if got := strings.Join(names, ","); got != "Package,Version,Description,Depends" {
		t.Errorf("field order %s", got)
	}
}

func TestParseParagraphsEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "\r\n\r\n", "  \n\t\n", "# only a comment\n"} {
		ps, err := ReadParagraphs(strings.NewReader(in))
		if err != nil || len(ps) != 0 {
			t.Errorf("%q: %d paragraphs, err %v", in, len(ps), err)
		}
	}
}

func TestParseParagraphsErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{" continuation\n", "line 1: continuation line outside a field"},
		{"Package: a\nno colon here\n", "line 2: \"no colon here\" is not a field"},
		{"Package: a\n: value\n", "line 2: invalid field name"},
		{"Package: a\n-Bad: value\n", "invalid field name"},
		{"Package: a\nVersion: 1\npackage: b\n", `line 3: duplicate field "package"`},
		{"Package: a\nX: " + strings.Repeat("y", maxLineLen) + "\n", "line longer than"},
	}
	for _, tc := range tests {
		_, err := ReadParagraphs(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.30q: error %v, want %q", tc.in, err, tc.want)
		}
	}
	// Duplicates are per paragraph.
	if _, err := ReadParagraphs(strings.NewReader("Package: a\n\nPackage: b\n")); err != nil {
		t.Error(err)
	}
}

func TestParseParagraphsEarlyStop(t *testing.T) {
	n := 0
	for p, err := range ParseParagraphs(strings.NewReader("A: 1\n\nA: 2\n\nA: 3\n")) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if p.Get("A") == "2" {
			break
		}
	}
	if n != 2 {
		t.Errorf("iterated %d paragraphs", n)
	}
}
