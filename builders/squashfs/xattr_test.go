package squashfs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// A Debian rootfs carries posix ACLs (system.posix_acl_*), which squashfs cannot store: they are
// expected, so they are summarized in one INFO line (count and paths), never a WARN per file.
// Any other unsupported xattr is a surprise and stays a WARN naming path and xattr.
func TestDroppedXattrsSummarizedAndSurprisesWarned(t *testing.T) {
	tarball := makeTar(t, []entry{
		dir("var/"), dir("var/log/"),
		{name: "var/log/journal/", typ: tar.TypeDir, mode: 0o2755, xattrs: map[string]string{
			"system.posix_acl_access": "\x02\x00\x00\x00", "system.posix_acl_default": "\x02\x00\x00\x00", "user.kept": "1"}},
		{name: "var/log/acl", typ: tar.TypeReg, mode: 0o644, data: []byte("x"), xattrs: map[string]string{"system.posix_acl_access": "\x02\x00\x00\x00"}},
		{name: "var/log/odd", typ: tar.TypeReg, mode: 0o644, data: []byte("y"), xattrs: map[string]string{"system.weird": "w"}},
	})
	for _, tc := range []struct {
		level     slog.Level
		want, not []string
	}{
		{slog.LevelWarn,
			[]string{`level=WARN msg="squashfs: dropping unsupported xattr" path=var/log/odd xattr=system.weird`},
			[]string{"posix_acl", "var/log/journal", "level=INFO"}},
		{slog.LevelInfo,
			[]string{`level=INFO msg="squashfs: dropped posix ACL xattrs`, "count=3", "paths=var/log/acl,var/log/journal",
				`level=WARN msg="squashfs: dropping unsupported xattr" path=var/log/odd xattr=system.weird`},
			nil},
	} {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: tc.level}))
		m := &memImage{}
		if _, err := Write(context.Background(), m, bytes.NewReader(tarball), Options{MTime: sde, Logger: log}); err != nil {
			t.Fatal(err)
		}
		got := logs.String()
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("level %v: log lacks %q:\n%s", tc.level, w, got)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("level %v: log has %q:\n%s", tc.level, n, got)
			}
		}
		if c := strings.Count(got, "level=WARN"); c != 1 {
			t.Errorf("level %v: %d WARN lines, want 1 (the surprising xattr):\n%s", tc.level, c, got)
		}
	}
}

// Many files with ACLs: the INFO line names the first maxLoggedPaths and says how many more
// the debug level lists.
func TestDroppedXattrsSummaryIsBounded(t *testing.T) {
	es := []entry{dir("d/")}
	for i := range maxLoggedPaths + 5 {
		es = append(es, entry{name: fmt.Sprintf("d/f%02d", i), typ: tar.TypeReg, mode: 0o644, xattrs: map[string]string{"system.posix_acl_access": "a"}})
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if _, err := Write(context.Background(), &memImage{}, bytes.NewReader(makeTar(t, es)), Options{MTime: sde, Logger: log}); err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "count=25 files=25") || !strings.Contains(got, "d/f19,… (5 more at debug level)") || strings.Contains(got, "d/f20") {
		t.Fatalf("want one bounded INFO line, got:\n%s", got)
	}
}
