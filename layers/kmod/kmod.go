// Package kmod reads kernel modules from a layer tar stream and generates the
// index files depmod writes (modules.dep, *.bin, ...), byte-compatible with kmod's depmod.
package kmod

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// File is one generated index file.
type File struct {
	Path string // tar-style path without leading slash, e.g. lib/modules/6.1.0-28-cloud-amd64/modules.dep.bin
	Mode int64
	Data []byte
}

// Module is one loadable module of a kernel.
type Module struct {
	Name        string   // e.g. virtio_blk
	Path        string   // relative to lib/modules/KVER, e.g. kernel/drivers/block/virtio_blk.ko
	Depends     []string // direct dependencies (module names), in depmod's load order
	Aliases     []string // alias= values of .modinfo, in order
	SoftdepPre  []string // softdep= "pre:" modules
	SoftdepPost []string // softdep= "post:" modules
}

// Index is the parsed dependency information of one kernel version.
type Index struct {
	KernelVersion string
	Modules       map[string]*Module
	Builtin       map[string]bool

	st *state // depmod's computed state; nil unless made by Scan
}

// state is what depmod keeps between loading modules and writing indexes.
type state struct {
	root           string // lib/modules/KVER or usr/lib/modules/KVER
	mods           []*mod // depmod's module array (modules.order order)
	symbols        []symbol
	builtin        []byte // modules.builtin, if shipped
	builtinModinfo []byte // modules.builtin.modinfo, if shipped
	hasBuiltin     bool
	hasBuiltinInfo bool
}

type mod struct {
	name    string
	relpath string
	meta    *modMeta
	idx     int
	sortIdx int
	deps    []*mod // direct dependencies
	users   int
	depSort int
	all     []*mod // all dependencies, sorted by depSort
}

type symbol struct {
	name  string
	owner *mod
}

// Generate reads a kernel layer tar stream and returns, for every kernel
// version found under lib/modules/KVER or usr/lib/modules/KVER, the index
// files depmod would write there. Output is ordered by kernel version, then
// in depmod's file order.
func Generate(ctx context.Context, r io.Reader) ([]File, error) {
	ixs, err := Scan(ctx, r)
	if err != nil {
		return nil, err
	}
	var out []File
	for _, ix := range ixs {
		fs, err := ix.Files()
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", ix.KernelVersion, err)
		}
		out = append(out, fs...)
	}
	return out, nil
}

// tree collects one kernel version's files while reading the tar stream.
type tree struct {
	kver           string
	root           string
	modules        map[string]*modFile // by relpath
	order          []byte
	hasOrder       bool
	builtin        []byte
	hasBuiltin     bool
	builtinModinfo []byte
	hasBuiltinInfo bool
}

type modFile struct {
	relpath string
	name    string
	meta    *modMeta
}

var moduleExts = []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"}

func hasModuleExt(name string) bool {
	for _, e := range moduleExts {
		if len(name) > len(e) && strings.HasSuffix(name, e) {
			return true
		}
	}
	return false
}

// modname is libkmod's path_to_modname: the basename up to its first dot,
// with '-' replaced by '_'.
func modname(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		p = p[i+1:]
	}
	if i := strings.IndexByte(p, '.'); i >= 0 {
		p = p[:i]
	}
	return strings.ReplaceAll(p, "-", "_")
}

// splitModulesPath splits a cleaned tar path into the modules root
// (lib/modules/KVER or usr/lib/modules/KVER), KVER and the path below it.
func splitModulesPath(p string) (root, kver, rel string, ok bool) {
	var rest, base string
	switch {
	case strings.HasPrefix(p, "lib/modules/"):
		base, rest = "lib/modules/", p[len("lib/modules/"):]
	case strings.HasPrefix(p, "usr/lib/modules/"):
		base, rest = "usr/lib/modules/", p[len("usr/lib/modules/"):]
	default:
		return "", "", "", false
	}
	kver, rel, _ = strings.Cut(rest, "/")
	if kver == "" || rel == "" {
		return "", "", "", false
	}
	return base + kver, kver, rel, true
}

// excluded reports whether depmod's directory walk skips rel.
func excluded(rel string) bool {
	for _, c := range strings.Split(rel, "/") {
		if c == "build" || c == "source" {
			return true
		}
	}
	return false
}

type decoders struct {
	zstd *zstd.Decoder
	buf  bytes.Buffer
}

func (d *decoders) close() {
	if d.zstd != nil {
		d.zstd.Close()
	}
}

// readModule reads (and decompresses) one module into the reused buffer.
func (d *decoders) readModule(name string, r io.Reader) ([]byte, error) {
	d.buf.Reset()
	switch {
	case strings.HasSuffix(name, ".ko.gz"):
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(name, ".ko.xz"):
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = xr
	case strings.HasSuffix(name, ".ko.zst"):
		if d.zstd == nil {
			zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, err
			}
			d.zstd = zr
		}
		if err := d.zstd.Reset(r); err != nil {
			return nil, err
		}
		r = d.zstd
	}
	if _, err := d.buf.ReadFrom(r); err != nil {
		return nil, err
	}
	return d.buf.Bytes(), nil
}

// Scan reads a kernel layer tar stream and computes, for every kernel
// version found, the module dependency information depmod would compute.
// Modules are read one at a time and only their metadata is kept. A module
// that is not a valid ELF object is an error naming its path.
func Scan(ctx context.Context, r io.Reader) ([]*Index, error) {
	trees := map[string]*tree{}
	byTarPath := map[string]*modMeta{} // for hard links
	dec := &decoders{}
	defer dec.close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("kmod: reading tar: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeLink {
			continue
		}
		p := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		root, kver, rel, ok := splitModulesPath(p)
		if !ok {
			continue
		}
		t := trees[kver]
		if t == nil {
			t = &tree{kver: kver, root: root, modules: map[string]*modFile{}}
			trees[kver] = t
		}
		if excluded(rel) {
			continue
		}
		if hdr.Typeflag == tar.TypeLink {
			target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
			if m := byTarPath[target]; m != nil && hasModuleExt(rel) {
				t.modules[rel] = &modFile{relpath: rel, name: modname(rel), meta: m}
			}
			continue
		}
		switch rel {
		case "modules.order", "modules.builtin", "modules.builtin.modinfo":
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("kmod: reading %s: %w", p, err)
			}
			switch rel {
			case "modules.order":
				t.order, t.hasOrder = b, true
			case "modules.builtin":
				t.builtin, t.hasBuiltin = b, true
			default:
				t.builtinModinfo, t.hasBuiltinInfo = b, true
			}
			continue
		}
		if !hasModuleExt(path.Base(rel)) {
			continue
		}
		data, err := dec.readModule(rel, tr)
		if err != nil {
			return nil, fmt.Errorf("kmod: reading module %s: %w", p, err)
		}
		meta, err := parseModule(data)
		if err != nil {
			return nil, fmt.Errorf("kmod: parsing module %s: %w", p, err)
		}
		byTarPath[p] = meta
		t.modules[rel] = &modFile{relpath: rel, name: modname(rel), meta: meta}
	}

	kvers := make([]string, 0, len(trees))
	for k := range trees {
		kvers = append(kvers, k)
	}
	sort.Strings(kvers)
	var out []*Index
	for _, k := range kvers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ix, err := trees[k].depmod()
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", k, err)
		}
		out = append(out, ix)
	}
	return out, nil
}

// searchPrio is depmod's priority of a module path under the default
// configuration (search path "updates" only): higher wins.
func searchPrio(rel string) int {
	if strings.HasPrefix(rel, "updates/") {
		return 0
	}
	return -1
}

// depmod runs depmod's computation on a collected tree.
func (t *tree) depmod() (*Index, error) {
	// Choose one file per module name. depmod walks the directory and keeps
	// the first file found unless a later one has a strictly higher search
	// priority; we walk in lexical order, which makes the result deterministic.
	rels := make([]string, 0, len(t.modules))
	for r := range t.modules {
		rels = append(rels, r)
	}
	sort.Strings(rels)
	chosen := map[string]*mod{}
	var added []*mod // in walk order
	for _, r := range rels {
		f := t.modules[r]
		if old := chosen[f.name]; old != nil && searchPrio(r) <= searchPrio(old.relpath) {
			continue
		}
		m := &mod{name: f.name, relpath: r, meta: f.meta}
		chosen[f.name] = m
		added = append(added, m)
	}
	// depmod gives every module sort index 1 (the module array is still
	// empty while it walks the tree), so modules missing from modules.order
	// keep the hash order below.
	var mods []*mod
	for _, m := range added {
		if chosen[m.name] == m {
			m.sortIdx = 1
			mods = append(mods, m)
		}
	}

	// Module array: kmod hash order, then sorted by modules.order if valid.
	sort.Slice(mods, func(i, j int) bool { return hashOrderLess(mods[i].name, mods[j].name, 512) })
	if t.hasOrder && orderValid(t.order) {
		byUnc := map[string]*mod{}
		for _, m := range mods {
			byUnc[uncompressedRelpath(m)] = m
		}
		lines := strings.Split(string(t.order), "\n")
		lines = lines[:len(lines)-1] // orderValid: ends with '\n' (or is empty)
		total := len(lines) + 1
		for i, l := range lines {
			if m := byUnc[l]; m != nil {
				m.sortIdx = i + 1 - total
			}
		}
		sort.SliceStable(mods, func(i, j int) bool { return mods[i].sortIdx < mods[j].sortIdx })
	}
	for i, m := range mods {
		m.idx = i
	}

	// Exported symbols: later modules replace earlier owners.
	owners := map[string]*mod{}
	for _, m := range mods {
		for _, s := range m.meta.exports {
			owners[s] = m
		}
	}
	// Dependencies from needed symbols.
	for _, m := range mods {
		seen := map[*mod]bool{}
		for _, s := range m.meta.needs {
			s = strings.TrimPrefix(s, ".")
			o := owners[s]
			if o == nil || seen[o] {
				continue
			}
			seen[o] = true
			m.deps = append(m.deps, o)
			o.users++
		}
	}
	if err := topoSort(mods); err != nil {
		return nil, err
	}
	for _, m := range mods {
		sort.Slice(m.deps, func(i, j int) bool { return m.deps[i].depSort < m.deps[j].depSort })
		m.all = allDeps(m)
	}

	syms := make([]symbol, 0, len(owners))
	for n, o := range owners {
		if o != nil {
			syms = append(syms, symbol{n, o})
		}
	}
	sort.Slice(syms, func(i, j int) bool { return hashOrderLess(syms[i].name, syms[j].name, 2048) })

	ix := &Index{
		KernelVersion: t.kver,
		Modules:       map[string]*Module{},
		Builtin:       map[string]bool{},
		st: &state{
			root: t.root, mods: mods, symbols: syms,
			builtin: t.builtin, hasBuiltin: t.hasBuiltin,
			builtinModinfo: t.builtinModinfo, hasBuiltinInfo: t.hasBuiltinInfo,
		},
	}
	for _, m := range mods {
		pm := &Module{Name: m.name, Path: m.relpath}
		for _, d := range m.deps {
			pm.Depends = append(pm.Depends, d.name)
		}
		for _, kv := range m.meta.info {
			switch kv.key {
			case "alias":
				pm.Aliases = append(pm.Aliases, kv.value)
			case "softdep":
				pre, post := parseSoftdep(kv.value)
				pm.SoftdepPre = append(pm.SoftdepPre, pre...)
				pm.SoftdepPost = append(pm.SoftdepPost, post...)
			}
		}
		ix.Modules[m.name] = pm
	}
	for _, name := range builtinNames(t.builtin) {
		ix.Builtin[name] = true
	}
	return ix, nil
}

// orderValid mirrors depmod, which ignores a modules.order whose last line
// lacks its newline.
func orderValid(b []byte) bool {
	return len(b) == 0 || b[len(b)-1] == '\n'
}

// uncompressedRelpath is depmod's "uncrelpath": the relative path cut after
// the module name plus ".ko".
func uncompressedRelpath(m *mod) string {
	n := strings.LastIndexByte(m.relpath, '/') + 1 + len(m.name) + len(".ko")
	if n > len(m.relpath) {
		n = len(m.relpath)
	}
	return m.relpath[:n]
}

// topoSort numbers modules so that users come before what they use,
// exactly as depmod_calculate_dependencies does.
func topoSort(mods []*mod) error {
	users := make([]int, len(mods))
	var roots []int
	for i, m := range mods {
		users[i] = m.users
		if users[i] == 0 {
			roots = append(roots, i)
		}
	}
	n := 0
	for len(roots) > 0 {
		src := mods[roots[len(roots)-1]]
		roots = roots[:len(roots)-1]
		src.depSort = n
		n++
		for _, d := range src.deps {
			users[d.idx]--
			if users[d.idx] == 0 {
				roots = append(roots, d.idx)
			}
		}
	}
	if n < len(mods) {
		var cyc []string
		for i, m := range mods {
			if users[i] > 0 {
				cyc = append(cyc, m.name)
			}
		}
		return fmt.Errorf("dependency cycle among modules %s", strings.Join(cyc, " "))
	}
	return nil
}

// allDeps returns the transitive dependencies of m, sorted by depSort
// (a module's dependencies always sort after it).
func allDeps(m *mod) []*mod {
	var out []*mod
	seen := map[*mod]bool{}
	var walk func(*mod)
	walk = func(x *mod) {
		for _, d := range x.deps {
			if seen[d] {
				continue
			}
			seen[d] = true
			out = append(out, d)
			walk(d)
		}
	}
	walk(m)
	sort.Slice(out, func(i, j int) bool { return out[i].depSort < out[j].depSort })
	return out
}

func parseSoftdep(v string) (pre, post []string) {
	var cur *[]string
	for _, f := range strings.Fields(v) {
		switch f {
		case "pre:":
			cur = &pre
		case "post:":
			cur = &post
		default:
			if strings.HasSuffix(f, ":") {
				cur = nil
			} else if cur != nil {
				*cur = append(*cur, f)
			}
		}
	}
	return pre, post
}

// builtinLines splits modules.builtin like fgets does.
func builtinLines(b []byte) []string {
	s := string(b)
	var out []string
	for s != "" {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i+1])
		s = s[i+1:]
	}
	return out
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// builtinNames returns the module names of modules.builtin, as depmod
// derives them for modules.builtin.bin.
func builtinNames(b []byte) []string {
	var out []string
	for _, l := range builtinLines(b) {
		if !isAlpha(l[0]) {
			continue
		}
		out = append(out, modname(l))
	}
	return out
}

// Closure returns the modules to load for names, dependencies first, in the
// order modprobe loads them. Built-in modules are skipped; an unknown name
// is an error. Soft dependencies are not followed.
func (ix *Index) Closure(names ...string) ([]*Module, error) {
	var out []*Module
	seen := map[string]bool{}
	add := func(m *Module) {
		if !seen[m.Name] {
			seen[m.Name] = true
			out = append(out, m)
		}
	}
	for _, n := range names {
		n = modname(n)
		m := ix.Modules[n]
		if m == nil {
			if ix.Builtin[n] {
				continue
			}
			return nil, fmt.Errorf("kmod: %s: unknown module %q", ix.KernelVersion, n)
		}
		all, err := ix.transitive(m)
		if err != nil {
			return nil, err
		}
		for i := len(all) - 1; i >= 0; i-- {
			add(all[i])
		}
		add(m)
	}
	return out, nil
}

// transitive returns m's transitive dependencies as modules.dep lists them.
func (ix *Index) transitive(m *Module) ([]*Module, error) {
	if ix.st != nil {
		for _, x := range ix.st.mods {
			if x.name == m.Name && x.relpath == m.Path {
				var out []*Module
				for _, d := range x.all {
					if dm := ix.Modules[d.name]; dm != nil {
						out = append(out, dm)
					}
				}
				return out, nil
			}
		}
	}
	// Index built by hand: depth-first post order over Depends, reversed
	// so that it reads like a modules.dep line.
	var post []*Module
	state := map[string]int{}
	var visit func(*Module) error
	visit = func(x *Module) error {
		for _, d := range x.Depends {
			dm := ix.Modules[d]
			if dm == nil {
				if ix.Builtin[d] {
					continue
				}
				return fmt.Errorf("kmod: %s: module %s depends on unknown module %q", ix.KernelVersion, x.Name, d)
			}
			switch state[d] {
			case 1:
				return fmt.Errorf("kmod: %s: dependency cycle through %s", ix.KernelVersion, d)
			case 2:
				continue
			}
			state[d] = 1
			if err := visit(dm); err != nil {
				return err
			}
			state[d] = 2
			post = append(post, dm)
		}
		return nil
	}
	state[m.Name] = 1
	if err := visit(m); err != nil {
		return nil, err
	}
	for i, j := 0, len(post)-1; i < j; i, j = i+1, j-1 {
		post[i], post[j] = post[j], post[i]
	}
	return post, nil
}
