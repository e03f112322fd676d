package imagediff

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"golang.org/x/sync/errgroup"
)

// Kinds of FileChange.
const (
	Added   = "added"
	Removed = "removed"
	Changed = "changed"
)

// FileChange is one path that differs between the two roots.
type FileChange struct {
	Path   string `json:"path"`   // without a leading "/"
	Change string `json:"change"` // added, removed or changed
	// Type is the entry's type in B (in A for a removed one): file, dir, symlink, char, block,
	// fifo, socket.
	Type string `json:"type"`
	// OldSize and NewSize are the sizes in A and B (0 where the path is absent); a
	// directory's is its squashfs listing size, a symlink's its target's length.
	OldSize int64 `json:"oldSize"`
	NewSize int64 `json:"newSize"`
	// What changed, for a changed path: type, content, target, mode, owner.
	What []string `json:"what,omitempty"`
}

// Files are the differences between the two root filesystems, sorted by path.
type Files struct {
	Changes []FileChange `json:"changes"`
	// Added, Removed, Changed count the changes; Unchanged the paths in both that are equal.
	Added     int `json:"added"`
	Removed   int `json:"removed"`
	Changed   int `json:"changed"`
	Unchanged int `json:"unchanged"`
	// AddedBytes and RemovedBytes sum the sizes of added and removed regular files;
	// ChangedBytes the sizes in B of changed regular files.
	AddedBytes   int64 `json:"addedBytes"`
	RemovedBytes int64 `json:"removedBytes"`
	ChangedBytes int64 `json:"changedBytes"`
}

// entry is one path of a root filesystem.
type entry struct {
	typ      string
	perm     fs.FileMode // permission bits only: go-diskfs v1.9.4 reports no setuid, setgid or sticky bit
	uid, gid uint32
	size     int64
	target   string
	sum      [32]byte // regular files whose content is compared
	// open opens a regular file from its directory entry (no path lookup).
	open func() (io.ReadCloser, error)
}

// opener is what go-diskfs's squashfs directory entries offer besides fs.DirEntry.
type opener interface {
	Open() (filesystem.File, error)
}

// squashRoot is a root squashfs: the first size bytes of a file (a root blob carries its
// dm-verity hash area after them).
type squashRoot struct {
	name string // for errors: the artifact and image
	path string
	size int64
}

func (r squashRoot) open() (*squashfs.FileSystem, func(), error) {
	f, err := os.Open(r.path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", r.name, err)
	}
	fsys, err := squashfs.Read(file.New(f, true), r.size, 0, 0)
	if err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("reading %s (%s) as squashfs: %w", r.name, r.path, err)
	}
	return fsys, func() { _ = f.Close() }, nil
}

// tree lists every path of fsys (not the root directory itself).
func tree(ctx context.Context, name string, fsys *squashfs.FileSystem) (map[string]*entry, error) {
	out := map[string]*entry{}
	var walk func(dir string) error
	walk = func(dir string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("%s: listing /%s: %w", name, strings.TrimPrefix(dir, "."), err)
		}
		for _, de := range ents {
			p := path.Join(dir, de.Name())
			fi, err := de.Info()
			if err != nil {
				return fmt.Errorf("%s: /%s: %w", name, p, err)
			}
			e := &entry{typ: typeName(fi.Mode()), perm: fi.Mode().Perm(), size: fi.Size()}
			if st, ok := fi.Sys().(*squashfs.StatT); ok {
				e.uid, e.gid, e.target = st.UID, st.GID, st.LinkTarget
			}
			if e.typ == "symlink" {
				e.size = int64(len(e.target))
			}
			if o, ok := de.(opener); ok && e.typ == "file" {
				e.open = func() (io.ReadCloser, error) { return o.Open() }
			}
			out[p] = e
			if fi.IsDir() {
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(".")
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "char"
	case m&fs.ModeDevice != 0:
		return "block"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "other"
}

// hashFiles fills the content hash of the given regular files of fsys.
func hashFiles(ctx context.Context, name string, fsys *squashfs.FileSystem, t map[string]*entry, paths []string) error {
	buf := make([]byte, 256<<10)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		var f io.ReadCloser
		var err error
		if e := t[p]; e.open != nil {
			f, err = e.open()
		} else {
			f, err = fsys.OpenFile(p, os.O_RDONLY)
		}
		if err != nil {
			return fmt.Errorf("%s: opening /%s: %w", name, p, err)
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, f, buf)
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("%s: reading /%s: %w", name, p, err)
		}
		if e := t[p]; n != e.size {
			return fmt.Errorf("%s: /%s: read %d bytes, its inode says %d", name, p, n, e.size)
		}
		h.Sum(t[p].sum[:0])
	}
	return nil
}

// diffFiles compares two root filesystems path by path: types, permissions, owners, symlink
// targets, and the content of regular files of equal size (sha256 of both, each image read
// by its own goroutine).
func diffFiles(ctx context.Context, a, b squashRoot) (*Files, error) {
	var ta, tb map[string]*entry
	fa, closeA, err := a.open()
	if err != nil {
		return nil, err
	}
	defer closeA()
	fb, closeB, err := b.open()
	if err != nil {
		return nil, err
	}
	defer closeB()
	if ta, err = tree(ctx, a.name, fa); err != nil {
		return nil, err
	}
	if tb, err = tree(ctx, b.name, fb); err != nil {
		return nil, err
	}
	var same []string // regular files in both with equal sizes: compare their content
	for p, ea := range ta {
		if eb, ok := tb[p]; ok && ea.typ == "file" && eb.typ == "file" && ea.size == eb.size && ea.size > 0 {
			same = append(same, p)
		}
	}
	slices.Sort(same)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return hashFiles(gctx, a.name, fa, ta, same) })
	g.Go(func() error { return hashFiles(gctx, b.name, fb, tb, same) })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return compareTrees(ta, tb), nil
}

// compareTrees is the pure part of diffFiles: the trees with their content hashes filled.
func compareTrees(ta, tb map[string]*entry) *Files {
	out := &Files{Changes: []FileChange{}}
	for p, ea := range ta {
		eb, ok := tb[p]
		if !ok {
			out.Changes = append(out.Changes, FileChange{Path: p, Change: Removed, Type: ea.typ, OldSize: ea.size})
			out.Removed++
			if ea.typ == "file" {
				out.RemovedBytes += ea.size
			}
			continue
		}
		var what []string
		switch {
		case ea.typ != eb.typ:
			what = append(what, "type")
		case ea.typ == "file" && (ea.size != eb.size || ea.sum != eb.sum):
			what = append(what, "content")
		case ea.typ == "symlink" && ea.target != eb.target:
			what = append(what, "target")
		}
		if ea.perm != eb.perm {
			what = append(what, "mode")
		}
		if ea.uid != eb.uid || ea.gid != eb.gid {
			what = append(what, "owner")
		}
		if len(what) == 0 {
			out.Unchanged++
			continue
		}
		out.Changes = append(out.Changes, FileChange{Path: p, Change: Changed, Type: eb.typ, OldSize: ea.size, NewSize: eb.size, What: what})
		out.Changed++
		if eb.typ == "file" {
			out.ChangedBytes += eb.size
		}
	}
	for p, eb := range tb {
		if _, ok := ta[p]; !ok {
			out.Changes = append(out.Changes, FileChange{Path: p, Change: Added, Type: eb.typ, NewSize: eb.size})
			out.Added++
			if eb.typ == "file" {
				out.AddedBytes += eb.size
			}
		}
	}
	slices.SortFunc(out.Changes, func(x, y FileChange) int { return strings.Compare(x.Path, y.Path) })
	return out
}

// errNoRoot: an image has no root squashfs to compare.
var errNoRoot = errors.New("no " + rootArtifact + " artifact")
