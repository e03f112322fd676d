// Package tartest writes small tar archives for tests from a one-line-per-entry notation, so
// that the hostile inputs of the source, compose and CLI tests read as what they are.
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// Tar writes a tar of entries: "name" (a one-byte file), "name/" (a directory),
// "name -> target" (a symlink), "name => target" (a hard link). Names are kept exactly as
// given (no cleaning), so hostile spellings survive.
func Tar(t testing.TB, entries ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e, Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}
		if n, l, ok := strings.Cut(e, " -> "); ok {
			hdr = &tar.Header{Name: n, Linkname: l, Typeflag: tar.TypeSymlink, Mode: 0o777}
		} else if n, l, ok := strings.Cut(e, " => "); ok {
			hdr = &tar.Header{Name: n, Linkname: l, Typeflag: tar.TypeLink, Mode: 0o644}
		} else if strings.HasSuffix(e, "/") {
			hdr = &tar.Header{Name: e, Typeflag: tar.TypeDir, Mode: 0o755}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Ar writes an ar archive (the container of a .deb) of members given as name, content pairs,
// in order, with zero timestamps and owners.
func Ar(members ...string) []byte {
	var buf bytes.Buffer
	buf.WriteString("!<arch>\n")
	for i := 0; i+1 < len(members); i += 2 {
		fmt.Fprintf(&buf, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", members[i], 0, 0, 0, "100644", len(members[i+1]))
		buf.WriteString(members[i+1])
		if len(members[i+1])%2 == 1 {
			buf.WriteByte('\n')
		}
	}
	return buf.Bytes()
}
