// Package tarentry validates and normalizes single tar entries: it is the gate every byte of a
// layer passes, rejecting paths and links that escape the root and unsupported entry types.
package tarentry

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Whiteout prefixes of the OCI image layer specification.
const (
	WhiteoutPrefix = ".wh."
	OpaqueWhiteout = ".wh..wh..opq"
)

// UnsafeError reports an entry rejected because it could escape the root or is not a kind of
// file a rootfs may hold.
type UnsafeError struct {
	Name   string // entry name as found in the archive
	Link   string // link target, when relevant
	Reason string
}

func (e *UnsafeError) Error() string {
	if e.Link != "" {
		return fmt.Sprintf("unsafe tar entry %q -> %q: %s", e.Name, e.Link, e.Reason)
	}
	return fmt.Sprintf("unsafe tar entry %q: %s", e.Name, e.Reason)
}

// CleanName turns an archive member name into the canonical relative form used throughout
// imgctl ("usr/bin/kubelet", "" for the root). It accepts a leading "./" and trailing "/",
// and rejects absolute names and any ".." component.
func CleanName(name string) (string, error) {
	n := name
	for strings.HasPrefix(n, "./") {
		n = n[2:]
	}
	if n == "." || n == "" {
		return "", nil
	}
	if strings.HasPrefix(n, "/") {
		return "", &UnsafeError{Name: name, Reason: "absolute path"}
	}
	if strings.ContainsRune(n, 0) {
		return "", &UnsafeError{Name: name, Reason: "NUL byte in name"}
	}
	n = strings.TrimRight(n, "/")
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", &UnsafeError{Name: name, Reason: `".." path component`}
		}
	}
	c := path.Clean(n)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// LinkEscapes reports whether a symlink in directory dir (canonical, "" or "." for the root)
// whose target is target climbs above the root when the target is resolved lexically from dir.
// Absolute targets resolve inside the root and never escape.
func LinkEscapes(dir, target string) bool {
	if strings.HasPrefix(target, "/") {
		return false
	}
	depth := 0 // components of dir
	if dir != "" && dir != "." {
		depth = strings.Count(dir, "/") + 1
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// Clean validates hdr in place: the name and any hard link target are made canonical, symlink
// targets are checked not to climb above the root (lexically, from the entry's name: Compose
// checks them again where symlinks in the path really place the entry), whiteouts must hide
// a nameable file and no whiteout name may be a directory in a path, and only regular files, directories,
// symlinks, hard links, character and block devices and FIFOs are accepted.
func Clean(hdr *tar.Header) error {
	name, err := CleanName(hdr.Name)
	if err != nil {
		return err
	}
	if err := checkWhiteoutNames(hdr.Name, name); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return &UnsafeError{Name: hdr.Name, Reason: "symlink with empty target"}
		}
		if strings.ContainsRune(hdr.Linkname, 0) {
			return &UnsafeError{Name: hdr.Name, Link: hdr.Linkname, Reason: "NUL byte in symlink target"}
		}
		if LinkEscapes(path.Dir(name), hdr.Linkname) {
			return &UnsafeError{Name: hdr.Name, Link: hdr.Linkname, Reason: "symlink target escapes the root"}
		}
	case tar.TypeLink:
		if strings.HasPrefix(hdr.Linkname, "/") {
			return &UnsafeError{Name: hdr.Name, Link: hdr.Linkname, Reason: "hard link to an absolute path"}
		}
		target, err := CleanName(hdr.Linkname)
		if err != nil {
			return &UnsafeError{Name: hdr.Name, Link: hdr.Linkname, Reason: "hard link target escapes the root"}
		}
		if target == "" {
			return &UnsafeError{Name: hdr.Name, Link: hdr.Linkname, Reason: "hard link to the root directory"}
		}
		hdr.Linkname = target
	default:
		return &UnsafeError{Name: hdr.Name, Reason: fmt.Sprintf("unsupported entry type %q", string(hdr.Typeflag))}
	}
	if hdr.Size < 0 {
		return &UnsafeError{Name: hdr.Name, Reason: "negative size"}
	}
	if hdr.Typeflag != tar.TypeReg {
		hdr.Size = 0
	}
	hdr.Name = name
	return nil
}

// checkWhiteoutNames refuses a whiteout that hides nothing a directory can hold ("", ".",
// "..") and a whiteout name used as a directory: neither means anything in a layer, and what
// a consumer makes of them differs.
func checkWhiteoutNames(orig, name string) error {
	comps := strings.Split(name, "/")
	for _, c := range comps[:len(comps)-1] {
		if strings.HasPrefix(c, WhiteoutPrefix) {
			return &UnsafeError{Name: orig, Reason: fmt.Sprintf("whiteout name %q used as a directory", c)}
		}
	}
	if hidden, opaque, ok := IsWhiteout(comps[len(comps)-1]); ok && !opaque {
		if hidden == "" || hidden == "." || hidden == ".." {
			return &UnsafeError{Name: orig, Reason: fmt.Sprintf("whiteout of %q (it must name a file of the directory)", hidden)}
		}
	}
	return nil
}

// Normalize rewrites the metadata that must not vary between builds: times are set to mtime,
// user and group names are dropped (numeric owners are kept), the mode keeps only permission
// and special bits, and only extended attributes survive among the PAX records.
func Normalize(hdr *tar.Header, mtime time.Time) {
	hdr.ModTime = mtime
	hdr.AccessTime = time.Time{}
	hdr.ChangeTime = time.Time{}
	hdr.Uname = ""
	hdr.Gname = ""
	hdr.Mode &= 0o7777
	hdr.Format = tar.FormatUnknown
	var xattrs map[string]string
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if xattrs == nil {
				xattrs = make(map[string]string)
			}
			xattrs[k] = v
		}
	}
	hdr.PAXRecords = xattrs
	//lint:ignore SA1019 cleared so the deprecated field never leaks into output
	hdr.Xattrs = nil
	if hdr.Typeflag != tar.TypeChar && hdr.Typeflag != tar.TypeBlock {
		hdr.Devmajor, hdr.Devminor = 0, 0
	}
	if hdr.Typeflag == tar.TypeDir {
		if hdr.Name != "" && !strings.HasSuffix(hdr.Name, "/") {
			hdr.Name += "/"
		}
	}
}

// IsWhiteout reports whether base (a file name without directory) is an OCI whiteout and, for
// a plain whiteout, the name it hides; opaque reports the directory-opaque marker.
func IsWhiteout(base string) (hidden string, opaque, ok bool) {
	if base == OpaqueWhiteout {
		return "", true, true
	}
	if strings.HasPrefix(base, WhiteoutPrefix) {
		return strings.TrimPrefix(base, WhiteoutPrefix), false, true
	}
	return "", false, false
}

// Each reads the tar stream r entry by entry and calls fn with each header and a reader of
// its content (what fn leaves unread is skipped), checking ctx every 1024 entries. Errors of
// the stream read "reading tar: …"; fn's errors are returned as they are.
func Each(ctx context.Context, r io.Reader, fn func(hdr *tar.Header, content io.Reader) error) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if err := fn(hdr, tr); err != nil {
			return err
		}
	}
}
