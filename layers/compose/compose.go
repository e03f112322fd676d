// Package compose merges layer tars, in order and with OCI whiteout semantics, into one
// normalized tar stream: either a layer (whiteouts kept) or the canonical rootfs.
package compose

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/tarentry"
)

// maxSymlinkHops bounds symlink resolution while placing entries, like the kernel's ELOOP.
const maxSymlinkHops = 40

// Mode selects what Compose writes.
type Mode int

const (
	// Rootfs applies whiteouts, writes every directory (synthesizing missing parents as
	// 0755 root:root) and starts with the root directory "./".
	Rootfs Mode = iota
	// Layer keeps whiteouts that may hide content of lower layers and writes only the
	// entries the inputs contained, so the result can itself be composed later.
	Layer
)

// Input is one layer tar. It must be seekable: Compose reads the headers first and the file
// contents only while writing, so memory depends on the number of entries, not on their size.
type Input struct {
	Name   string      // used in error messages: a role or a source URI
	Reader io.ReaderAt // an uncompressed tar written by imgctl (no sparse entries)
	Size   int64
}

// Options configure Compose.
type Options struct {
	Mode Mode
	// MTime is written as the modification time of every entry (SOURCE_DATE_EPOCH).
	MTime  time.Time
	Logger *slog.Logger
	// Finalize, when set, runs once every input is indexed and before anything is written. It
	// sees the merged tree's regular files and returns generated files that are added on top
	// of the last input (for example a list of file digests that must be part of the rootfs).
	Finalize func(ctx context.Context, files *Files) ([]Generated, error)
	// Step names the progress step Compose reports (tar bytes and entries written), e.g.
	// "compose layer kernel"; "" means "compose rootfs" or "compose layer" by Mode.
	Step string
}

// Generated is a file Finalize adds to the composed tree. Missing parent directories are
// created 0755 root:root.
type Generated struct {
	Path string // relative, e.g. "etc/imgctl/image.json"
	Mode int64  // permission bits
	Data []byte
}

// File is one regular file of the merged tree, as Finalize sees it.
type File struct {
	Path  string // relative, e.g. "usr/bin/kubelet"
	Mode  int64  // permission bits, setuid/setgid/sticky included
	Input int    // index of the input that supplied the content
	Size  int64
	// Content reads the file's bytes from that input.
	Content *io.SectionReader
}

// Files is the merged tree handed to Options.Finalize.
type Files struct {
	t      *tree
	inputs []Input
}

// Walk calls fn for every regular file in output order. A hard-linked file is visited once per
// name.
func (f *Files) Walk(fn func(File) error) error { return f.walk("", f.t.root, fn) }

func (f *Files) walk(dir string, d *node, fn func(File) error) error {
	names := make([]string, 0, len(d.children))
	for name, c := range d.children {
		if !c.whiteout {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		c := d.children[name]
		switch {
		case c.isDir():
			if err := f.walk(dir+name+"/", c, fn); err != nil {
				return err
			}
		case c.data != nil:
			in := f.inputs[c.data.input]
			err := fn(File{
				Path: dir + name, Mode: c.hdr.Mode, Input: c.data.input, Size: c.data.size,
				Content: io.NewSectionReader(in.Reader, c.data.offset, c.data.size),
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// generatedInput packs Finalize's files as one more input.
func generatedInput(files []Generated) (Input, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, g := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: g.Path, Mode: g.Mode, Size: int64(len(g.Data))}
		if err := tw.WriteHeader(hdr); err != nil {
			return Input{}, fmt.Errorf("generated file %q: %w", g.Path, err)
		}
		if _, err := tw.Write(g.Data); err != nil {
			return Input{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Input{}, err
	}
	return Input{Name: "generated", Reader: bytes.NewReader(buf.Bytes()), Size: int64(buf.Len())}, nil
}

// Result describes what Compose wrote.
type Result struct {
	Entries int   // tar entries written
	Bytes   int64 // regular file content written
}

type inode struct {
	input   int
	offset  int64
	size    int64
	emitted string // path written first, later paths become hard links to it
}

type node struct {
	hdr      tar.Header // normalized metadata; Name is set on output
	children map[string]*node
	data     *inode
	input    int  // input that last wrote this node
	implicit bool // created only as a parent of another entry
	whiteout bool // Layer mode: hides the name in lower layers
	opaque   bool // Layer mode: hides all lower content of this directory
}

func (n *node) isDir() bool { return n.hdr.Typeflag == tar.TypeDir && !n.whiteout }

func newDir(input int, implicit bool) *node {
	return &node{
		hdr:      tar.Header{Typeflag: tar.TypeDir, Mode: 0o755},
		children: make(map[string]*node),
		input:    input,
		implicit: implicit,
	}
}

// Compose reads inputs in order (lowest first) and writes the merged tree to w.
func Compose(ctx context.Context, w io.Writer, inputs []Input, opts Options) (Result, error) {
	name := opts.Step
	if name == "" {
		name = map[Mode]string{Rootfs: "compose rootfs", Layer: "compose layer"}[opts.Mode]
	}
	step := progress.Start(ctx, name)
	res, err := compose(ctx, io.MultiWriter(w, step.Writer()), inputs, opts, step)
	step.Done(err)
	return res, err
}

// Index reads the inputs' headers, in order, the way Compose does for the rootfs (whiteouts
// applied, entries placed through the symlinked directories of lower inputs) and returns the
// merged tree's regular files, reading no content and writing nothing: which input supplies
// which canonical path, without composing.
func Index(ctx context.Context, inputs []Input) (*Files, error) {
	t, err := index(ctx, inputs, Rootfs)
	if err != nil {
		return nil, err
	}
	return &Files{t: t, inputs: inputs}, nil
}

func index(ctx context.Context, inputs []Input, mode Mode) (*tree, error) {
	t := &tree{root: newDir(-1, true), mode: mode}
	for i, in := range inputs {
		if err := t.add(ctx, i, in); err != nil {
			return nil, fmt.Errorf("layer %s: %w", in.Name, err)
		}
	}
	return t, nil
}

func compose(ctx context.Context, w io.Writer, inputs []Input, opts Options, step *progress.Step) (Result, error) {
	t, err := index(ctx, inputs, opts.Mode)
	if err != nil {
		return Result{}, err
	}
	if opts.Finalize != nil {
		gen, err := opts.Finalize(ctx, &Files{t: t, inputs: inputs})
		if err != nil {
			return Result{}, err
		}
		if len(gen) > 0 {
			in, err := generatedInput(gen)
			if err != nil {
				return Result{}, err
			}
			inputs = append(slices.Clip(inputs), in)
			if err := t.add(ctx, len(inputs)-1, in); err != nil {
				return Result{}, fmt.Errorf("generated files: %w", err)
			}
		}
	}
	// Headers and padding are 512-byte writes: buffer them (one syscall per MiB, not per block).
	bw := bufio.NewWriterSize(w, 1<<20)
	wr := &writer{tw: tar.NewWriter(bw), inputs: inputs, mtime: opts.MTime.UTC(), mode: opts.Mode, ctx: ctx, step: step}
	if err := wr.emitTree(t.root); err != nil {
		return Result{}, err
	}
	if err := wr.tw.Close(); err != nil {
		return Result{}, fmt.Errorf("finishing tar stream: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return Result{}, fmt.Errorf("writing tar stream: %w", err)
	}
	return Result{Entries: wr.entries, Bytes: wr.bytes}, nil
}

type tree struct {
	root  *node
	mode  Mode
	alone bool // Checker: one layer without the layers below it
}

// add indexes every header of one input.
func (t *tree) add(ctx context.Context, idx int, in Input) error {
	sr := io.NewSectionReader(in.Reader, 0, in.Size)
	return tarentry.Each(ctx, sr, func(hdr *tar.Header, _ io.Reader) error {
		orig := hdr.Name
		if err := tarentry.Clean(hdr); err != nil {
			return err
		}
		var off int64
		if hdr.Typeflag == tar.TypeReg {
			var err error
			if off, err = sr.Seek(0, io.SeekCurrent); err != nil {
				return err
			}
		}
		return t.place(idx, orig, hdr, off)
	})
}

// Checker places the entries of one layer tar the way Compose does, headers only, so that a
// source is refused for what composing it would refuse, before any build. Entries a lower
// layer must supply (the target of a hard link) are assumed to be there: only Compose, which
// sees every layer, can check them, and a symlink in a lower layer can still make an upper
// layer's entry unsafe there.
type Checker struct{ t *tree }

// NewChecker returns a Checker for one layer.
func NewChecker() *Checker {
	return &Checker{t: &tree{root: newDir(-1, true), mode: Layer, alone: true}}
}

// Add checks the next entry. hdr must have passed tarentry.Clean (its name is the cleaned
// name Compose will see); orig is the name as the archive spells it, for errors.
func (c *Checker) Add(orig string, hdr *tar.Header) error {
	// Placing needs the name, type and link; the rest would only cost memory.
	return c.t.place(0, orig, &tar.Header{Name: hdr.Name, Typeflag: hdr.Typeflag, Linkname: hdr.Linkname}, 0)
}

func splitPath(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// lookupDir walks comps from the root following symlinks (clamped at the root, like a
// chroot) and returns the directory they name. With create, missing or non-directory
// components are replaced by implicit directories; without it, a missing one yields nil.
func (t *tree) lookupDir(comps []string, create bool, input int) (*node, error) {
	d, _, err := t.resolveDir(comps, create, input)
	return d, err
}

// resolveDir is lookupDir that also returns the path of the directory found, without
// symlinks ("" for the root).
func (t *tree) resolveDir(comps []string, create bool, input int) (*node, string, error) {
	stack := []*node{t.root}
	var names []string // names[i] is the name of stack[i+1]
	hops := 0
	for i := 0; i < len(comps); i++ {
		c := comps[i]
		cur := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack, names = stack[:len(stack)-1], names[:len(names)-1]
			}
			continue
		}
		child := cur.children[c]
		if child != nil && child.hdr.Typeflag == tar.TypeSymlink && !child.whiteout {
			if hops++; hops > maxSymlinkHops {
				return nil, "", errors.New("too many levels of symbolic links")
			}
			target := child.hdr.Linkname
			if strings.HasPrefix(target, "/") {
				stack, names = stack[:1], names[:0]
			}
			rest := append(splitPath(strings.Trim(target, "/")), comps[i+1:]...)
			comps, i = rest, -1
			continue
		}
		if child == nil || !child.isDir() {
			if !create {
				return nil, "", nil
			}
			child = newDir(input, true)
			cur.children[c] = child
		}
		stack, names = append(stack, child), append(names, c)
	}
	return stack[len(stack)-1], strings.Join(names, "/"), nil
}

// resolveNode finds the node a hard link names.
func (t *tree) resolveNode(p string) (*node, error) {
	dir, base := path.Split(p)
	parent, err := t.lookupDir(splitPath(strings.TrimSuffix(dir, "/")), false, 0)
	if err != nil || parent == nil {
		return nil, err
	}
	n := parent.children[base]
	if n == nil || n.whiteout {
		return nil, nil
	}
	return n, nil
}

// pruneLower removes everything under d that came from inputs below input.
func pruneLower(d *node, input int) {
	for name, c := range d.children {
		switch {
		case c.input < input:
			delete(d.children, name)
		case c.children != nil:
			pruneLower(c, input)
		}
	}
}

// place adds one cleaned entry; orig is its name as the archive spells it, for errors.
func (t *tree) place(input int, orig string, hdr *tar.Header, off int64) error {
	if err := t.placeEntry(input, orig, hdr, off); err != nil {
		var ue *tarentry.UnsafeError
		if errors.As(err, &ue) {
			return err // names the entry already
		}
		return fmt.Errorf("entry %q: %w", orig, err)
	}
	return nil
}

func (t *tree) placeEntry(input int, orig string, hdr *tar.Header, off int64) error {
	if hdr.Name == "" { // the root directory itself
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("root entry is not a directory")
		}
		t.root.hdr = *hdr
		t.root.implicit = false
		t.root.input = input
		return nil
	}
	dir, base := path.Split(hdr.Name)
	dirComps := splitPath(strings.TrimSuffix(dir, "/"))

	if hidden, opaque, ok := tarentry.IsWhiteout(base); ok {
		parent, err := t.lookupDir(dirComps, t.mode == Layer, input)
		if err != nil || parent == nil {
			return err
		}
		if opaque {
			pruneLower(parent, input)
			if t.mode == Layer {
				parent.opaque = true
			}
			return nil
		}
		if old := parent.children[hidden]; old != nil && old.input == input && !old.whiteout {
			return nil // a whiteout only hides lower layers
		}
		if t.mode == Layer {
			parent.children[hidden] = &node{whiteout: true, input: input}
		} else {
			delete(parent.children, hidden)
		}
		return nil
	}

	parent, resolved, err := t.resolveDir(dirComps, true, input)
	if err != nil {
		return err
	}
	// tarentry.Clean checked the target from the directory the name spells; symlinks on the
	// way may place the entry elsewhere.
	if hdr.Typeflag == tar.TypeSymlink && tarentry.LinkEscapes(resolved, hdr.Linkname) {
		return &tarentry.UnsafeError{Name: orig, Link: hdr.Linkname, Reason: fmt.Sprintf(
			"symlink target escapes the root (its directory %q resolves to %q through symlinks)",
			strings.TrimSuffix(dir, "/"), "/"+resolved)}
	}
	old := parent.children[base]
	n := &node{hdr: *hdr, input: input}
	n.hdr.Name = ""
	switch hdr.Typeflag {
	case tar.TypeDir:
		switch {
		case old != nil && old.isDir():
			old.hdr, old.input, old.implicit = n.hdr, input, false
			return nil
		case old != nil && old.hdr.Typeflag == tar.TypeSymlink && !old.whiteout:
			// dpkg semantics: a directory shipped where a symlink to a directory exists
			// keeps the symlink (merged /usr: bin -> usr/bin).
			if target, err := t.lookupDir(append(dirComps, base), false, input); err == nil && target != nil {
				return nil
			}
		}
		n.children = make(map[string]*node)
		n.opaque = old != nil && old.whiteout
	case tar.TypeReg:
		n.data = &inode{input: input, offset: off, size: hdr.Size}
	case tar.TypeLink:
		target, err := t.resolveNode(hdr.Linkname)
		if err != nil {
			return err
		}
		if target == nil && t.alone {
			n.data = &inode{input: input} // a lower layer must supply it: Compose checks
			break
		}
		if target == nil || target.data == nil {
			return fmt.Errorf("hard link target %q is not a regular file in this or a lower layer", hdr.Linkname)
		}
		n.hdr = target.hdr
		n.data = target.data
	}
	parent.children[base] = n
	return nil
}

type writer struct {
	ctx     context.Context
	tw      *tar.Writer
	inputs  []Input
	mtime   time.Time
	mode    Mode
	entries int
	bytes   int64
	step    *progress.Step // counts entries (the bytes are counted as written)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (w *writer) header(name string, hdr tar.Header) error {
	hdr.Name = name
	tarentry.Normalize(&hdr, w.mtime)
	if err := w.tw.WriteHeader(&hdr); err != nil {
		return fmt.Errorf("writing %q: %w", name, err)
	}
	w.entries++
	w.step.Add(0, 1)
	return nil
}

func (w *writer) emitTree(root *node) error {
	if w.mode == Rootfs || !root.implicit {
		if err := w.header("./", root.hdr); err != nil {
			return err
		}
	}
	return w.emitChildren("", root)
}

func (w *writer) emitChildren(dir string, d *node) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if d.opaque && w.mode == Layer {
		if err := w.header(dir+tarentry.OpaqueWhiteout, whiteoutHeader()); err != nil {
			return err
		}
	}
	// Sort by the name written, so whiteout markers take their place among the entries.
	type child struct {
		name, written string
		n             *node
	}
	kids := make([]child, 0, len(d.children))
	for name, c := range d.children {
		written := name
		if c.whiteout {
			written = tarentry.WhiteoutPrefix + name
		}
		kids = append(kids, child{name, written, c})
	}
	slices.SortFunc(kids, func(a, b child) int { return strings.Compare(a.written, b.written) })
	for _, k := range kids {
		c := k.n
		p := dir + k.name
		switch {
		case c.whiteout:
			if err := w.header(dir+k.written, whiteoutHeader()); err != nil {
				return err
			}
		case c.isDir():
			if !(c.implicit && w.mode == Layer) {
				if err := w.header(p, c.hdr); err != nil {
					return err
				}
			}
			if err := w.emitChildren(p+"/", c); err != nil {
				return err
			}
		case c.data != nil:
			if err := w.emitFile(p, c); err != nil {
				return err
			}
		default:
			if err := w.header(p, c.hdr); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *writer) emitFile(p string, c *node) error {
	hdr := c.hdr
	if c.data.emitted != "" {
		hdr.Typeflag = tar.TypeLink
		hdr.Linkname = c.data.emitted
		hdr.Size = 0
		return w.header(p, hdr)
	}
	c.data.emitted = p
	hdr.Typeflag = tar.TypeReg
	hdr.Size = c.data.size
	if err := w.header(p, hdr); err != nil {
		return err
	}
	in := w.inputs[c.data.input]
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, err := io.CopyBuffer(w.tw, io.NewSectionReader(in.Reader, c.data.offset, c.data.size), *bp)
	if err != nil {
		return fmt.Errorf("copying %q from layer %s: %w", p, in.Name, err)
	}
	if n != c.data.size {
		return fmt.Errorf("copying %q from layer %s: layer truncated (%d of %d bytes)", p, in.Name, n, c.data.size)
	}
	w.bytes += n
	return nil
}

func whiteoutHeader() tar.Header {
	return tar.Header{Typeflag: tar.TypeReg, Mode: 0o644}
}
