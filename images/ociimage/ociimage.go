// Package ociimage packs host files and directory trees into a minimal linux/amd64 OCI image —
// one layer, a config with the process settings — and adds it to a local OCI image layout under
// its full name, replacing the image of the same name. The control-plane images
// (scripts/build-control-plane-images.sh) are made this way, so that nodes need no registry.
//
// The layer is normalized: entries sorted, owned by 0:0, every modification time the given
// Created time, parent directories created (0755). The same inputs therefore give the same
// manifest digest. The layout's index.json names each image by the annotations
// org.opencontainers.image.ref.name and io.containerd.image.name, both the full name
// (containerd's "ctr images import" and imgctl's oci-layout sources read them).
//
// Writes are crash-safe: blobs are written to a temporary file, synced and renamed to their
// digest; index.json is replaced atomically under a lock (index.json.lock), so concurrent packs
// into one layout do not lose each other's images. A replaced image's blobs stay in blobs/.
package ociimage

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/flock"
)

// Annotations of the layout's index.json entries (and of the manifest).
const (
	AnnotationRefName       = "org.opencontainers.image.ref.name"
	AnnotationContainerName = "io.containerd.image.name"
	AnnotationCreated       = "org.opencontainers.image.created"
)

// File is one host file in the image: Src on the host (symlinks followed; it must be a regular
// file) at Dst, an absolute path in the image, with permission bits Mode (0: Src's).
type File struct {
	Src, Dst string
	Mode     fs.FileMode
}

// Dir is a host directory tree copied into the image at Dst (absolute; "/" for a root file
// system). Directories, regular files and symbolic links are copied with their permission bits
// (setuid, setgid and sticky included); links are kept as links, never followed. Other file
// types (devices, sockets, pipes) are refused.
type Dir struct {
	Src, Dst string
}

// Spec describes an image.
type Spec struct {
	// Name is the full reference REGISTRY/REPOSITORY:TAG the layout knows the image by.
	Name  string
	Files []File
	Dirs  []Dir
	// The process: Entrypoint and Cmd as in an OCI image config, Env entries KEY=VALUE, User
	// UID or UID:GID (numeric), WorkingDir an absolute path ("" = /).
	Entrypoint, Cmd, Env []string
	User, WorkingDir     string
	// Created is every entry's modification time and the image's creation time (whole seconds,
	// UTC); the zero time means the Unix epoch. Callers pass SOURCE_DATE_EPOCH.
	Created time.Time
}

// Result describes the packed image.
type Result struct {
	Name   string  `json:"name"`
	Digest v1.Hash `json:"digest"` // of the manifest
	// Size is the bytes the image adds to a layout that has none of its blobs: manifest, config
	// and the compressed layer.
	Size int64 `json:"size"`
	// LayerSize and Entries describe the uncompressed layer.
	LayerSize int64 `json:"layerSize"`
	Entries   int   `json:"entries"`
	Replaced  bool  `json:"replaced"` // the layout held another image of that name
}

// ErrInvalid is wrapped by every error about the Spec itself (as opposed to I/O errors).
var ErrInvalid = errors.New("invalid image spec")

// ParseName checks that s is a full image reference with a tag, REGISTRY/REPOSITORY:TAG, written
// the way it will be stored (no defaults filled in), and returns it parsed.
func ParseName(s string) (name.Tag, error) {
	t, err := name.NewTag(s, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("%w: image name %q: %w (expected REGISTRY/REPOSITORY:TAG)", ErrInvalid, s, err)
	}
	if t.Name() != s || !strings.Contains(s, "/") {
		return name.Tag{}, fmt.Errorf("%w: image name %q: expected a full name REGISTRY/REPOSITORY:TAG such as registry.imgctl.invalid/kubernetes/pause:3.4.1", ErrInvalid, s)
	}
	return t, nil
}

// CheckImagePath checks that p is a path in an image: absolute, clean (no "..", ".", "//" or
// trailing slash), no NUL; "/" only if root is true.
func CheckImagePath(p string, root bool) error {
	switch {
	case p == "/" && root:
		return nil
	case p == "/":
		return fmt.Errorf("%w: path %q: expected a file path in the image, not /", ErrInvalid, p)
	case !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.ContainsRune(p, 0):
		return fmt.Errorf("%w: path %q: expected an absolute clean path in the image (no .. or trailing /)", ErrInvalid, p)
	}
	return nil
}

var (
	envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	user   = regexp.MustCompile(`^[0-9]{1,10}(:[0-9]{1,10})?$`)
)

// check validates everything in s that does not need the host file system.
func (s *Spec) check() error {
	if _, err := ParseName(s.Name); err != nil {
		return err
	}
	for _, f := range s.Files {
		if f.Src == "" {
			return fmt.Errorf("%w: file for %s: no host path", ErrInvalid, f.Dst)
		}
		if err := CheckImagePath(f.Dst, false); err != nil {
			return fmt.Errorf("file %s: %w", f.Src, err)
		}
		if f.Mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			return fmt.Errorf("%w: file %s: mode %v: expected permission bits only", ErrInvalid, f.Dst, f.Mode)
		}
	}
	for _, d := range s.Dirs {
		if d.Src == "" {
			return fmt.Errorf("%w: directory for %s: no host path", ErrInvalid, d.Dst)
		}
		if err := CheckImagePath(d.Dst, true); err != nil {
			return fmt.Errorf("directory %s: %w", d.Src, err)
		}
	}
	for _, e := range s.Env {
		if !envKey.MatchString(e) || strings.ContainsRune(e, 0) {
			return fmt.Errorf("%w: environment entry %q: expected KEY=VALUE (KEY: letters, digits, _)", ErrInvalid, e)
		}
	}
	for _, a := range slices.Concat(s.Entrypoint, s.Cmd) {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("%w: argument %q contains NUL", ErrInvalid, a)
		}
	}
	if s.User != "" && !user.MatchString(s.User) {
		return fmt.Errorf("%w: user %q: expected UID or UID:GID (numbers)", ErrInvalid, s.User)
	}
	if s.WorkingDir != "" {
		if err := CheckImagePath(s.WorkingDir, true); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
	}
	return nil
}

// Pack builds s and adds it to the OCI layout at dir (created if missing), replacing the image
// of the same name. It returns what it packed.
func Pack(ctx context.Context, dir string, s Spec, log *slog.Logger) (Result, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := s.check(); err != nil {
		return Result{}, err
	}
	created := s.Created.Truncate(time.Second).UTC()
	if s.Created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	tree, err := s.tree(ctx)
	if err != nil {
		return Result{}, err
	}
	if err := initLayout(dir); err != nil {
		return Result{}, err
	}
	blobs := filepath.Join(dir, "blobs", "sha256")

	layer, err := writeLayer(ctx, blobs, tree, created)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: writing the layer into %s: %w", s.Name, blobs, err)
	}
	cfg := v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: created},
		Config: v1.Config{
			Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: s.Env, User: s.User, WorkingDir: s.WorkingDir,
		},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{layer.diffID}},
		History: []v1.History{{Created: v1.Time{Time: created}, CreatedBy: "imgctl images pack"}},
	}
	cfgDesc, err := writeJSON(blobs, types.OCIConfigJSON, cfg)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: config: %w", s.Name, err)
	}
	stamp := created.Format(time.RFC3339)
	man := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        cfgDesc,
		Layers:        []v1.Descriptor{{MediaType: types.OCILayer, Size: layer.size, Digest: layer.digest}},
		Annotations:   map[string]string{AnnotationRefName: s.Name, AnnotationCreated: stamp},
	}
	manDesc, err := writeJSON(blobs, types.OCIManifestSchema1, man)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: manifest: %w", s.Name, err)
	}
	manDesc.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	manDesc.Annotations = map[string]string{AnnotationRefName: s.Name, AnnotationContainerName: s.Name}
	replaced, err := addToIndex(ctx, dir, s.Name, manDesc, log)
	if err != nil {
		return Result{}, err
	}
	log.Info("packed image", "name", s.Name, "digest", manDesc.Digest, "layout", dir, "entries", len(tree), "replaced", replaced)
	return Result{
		Name: s.Name, Digest: manDesc.Digest, Size: manDesc.Size + cfgDesc.Size + layer.size,
		LayerSize: layer.uncompressed, Entries: len(tree), Replaced: replaced,
	}, nil
}

// entry is one file of the layer.
type entry struct {
	typ     byte // tar.TypeDir, TypeReg or TypeSymlink
	mode    fs.FileMode
	src     string // host file (TypeReg)
	size    int64
	link    string // TypeSymlink
	implied bool   // a parent directory nobody named
	from    string // what put it there, for messages
}

// tree collects the layer's entries by image path (without the leading /).
func (s *Spec) tree(ctx context.Context) (map[string]*entry, error) {
	t := map[string]*entry{}
	add := func(p string, e *entry) error {
		rel := strings.TrimPrefix(p, "/")
		if rel == "" {
			return nil // the root directory itself is not an entry
		}
		// Parents: directories, implied if nobody names them.
		for i := 0; i < len(rel); i++ {
			if rel[i] != '/' {
				continue
			}
			parent := rel[:i]
			if old, ok := t[parent]; ok {
				if old.typ != tar.TypeDir {
					return fmt.Errorf("%w: /%s (from %s) would be inside /%s, which is not a directory (from %s)", ErrInvalid, rel, e.from, parent, old.from)
				}
				continue
			}
			t[parent] = &entry{typ: tar.TypeDir, mode: 0o755, implied: true, from: e.from}
		}
		if old, ok := t[rel]; ok {
			if old.typ == tar.TypeDir && e.typ == tar.TypeDir {
				if old.implied {
					t[rel] = e
				}
				return nil // directories merge
			}
			return fmt.Errorf("%w: /%s is given twice: by %s and by %s", ErrInvalid, rel, old.from, e.from)
		}
		t[rel] = e
		return nil
	}
	for _, d := range s.Dirs {
		st, err := os.Stat(d.Src)
		if err != nil {
			return nil, fmt.Errorf("directory for %s: %w", d.Dst, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%w: %s (for %s) is %v, expected a directory", ErrInvalid, d.Src, d.Dst, st.Mode().Type())
		}
		err = filepath.WalkDir(d.Src, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			info, err := de.Info()
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(d.Src, p)
			if err != nil {
				return err
			}
			dst := path.Join(d.Dst, filepath.ToSlash(rel))
			if strings.ContainsRune(dst, 0) {
				return fmt.Errorf("%w: %s: NUL in the name", ErrInvalid, p)
			}
			e := &entry{mode: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), from: d.Src}
			switch {
			case info.IsDir():
				e.typ = tar.TypeDir
				if rel == "." && d.Dst == "/" {
					return nil
				}
			case info.Mode().IsRegular():
				e.typ, e.src, e.size = tar.TypeReg, p, info.Size()
			case info.Mode()&fs.ModeSymlink != 0:
				if e.link, err = os.Readlink(p); err != nil {
					return err
				}
				e.typ, e.mode = tar.TypeSymlink, 0o777
			default:
				return fmt.Errorf("%w: %s is %v: expected a directory, regular file or symbolic link", ErrInvalid, p, info.Mode().Type())
			}
			return add(dst, e)
		})
		if err != nil {
			return nil, fmt.Errorf("directory %s: %w", d.Src, err)
		}
	}
	for _, f := range s.Files {
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file for %s: %w", f.Dst, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: %s (for %s) is %v, expected a regular file", ErrInvalid, f.Src, f.Dst, st.Mode().Type())
		}
		mode := cmp.Or(f.Mode, st.Mode()&fs.ModePerm)
		if err := add(f.Dst, &entry{typ: tar.TypeReg, mode: mode, src: f.Src, size: st.Size(), from: f.Src}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// layerBlob is the written layer.
type layerBlob struct {
	digest, diffID     v1.Hash
	size, uncompressed int64
}

// writeLayer writes tree as a gzip-compressed tar blob into blobs.
func writeLayer(ctx context.Context, blobs string, tree map[string]*entry, mtime time.Time) (layerBlob, error) {
	names := make([]string, 0, len(tree))
	for n := range tree {
		names = append(names, n)
	}
	slices.Sort(names)
	var l layerBlob
	err := writeBlob(blobs, func(w io.Writer) error {
		zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if err != nil {
			return err
		}
		diff := sha256.New()
		counted := &counter{w: io.MultiWriter(zw, diff)}
		tw := tar.NewWriter(counted)
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := writeEntry(tw, n, tree[n], mtime); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		l.diffID, l.uncompressed = sum(diff), counted.n
		return zw.Close()
	}, func(d v1.Hash, n int64) { l.digest, l.size = d, n })
	return l, err
}

func writeEntry(tw *tar.Writer, n string, e *entry, mtime time.Time) error {
	hdr := &tar.Header{Typeflag: e.typ, Name: n, Mode: int64(e.mode.Perm()), ModTime: mtime, Format: tar.FormatPAX}
	if e.mode&fs.ModeSetuid != 0 {
		hdr.Mode |= 0o4000
	}
	if e.mode&fs.ModeSetgid != 0 {
		hdr.Mode |= 0o2000
	}
	if e.mode&fs.ModeSticky != 0 {
		hdr.Mode |= 0o1000
	}
	switch e.typ {
	case tar.TypeDir:
		hdr.Name += "/"
		return tw.WriteHeader(hdr)
	case tar.TypeSymlink:
		hdr.Linkname = e.link
		return tw.WriteHeader(hdr)
	}
	f, err := os.Open(e.src)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr.Size = e.size
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if n, err := io.CopyN(tw, f, e.size); err != nil {
		return fmt.Errorf("%s: read %d of %d bytes (did it change while packing?): %w", e.src, n, e.size, err)
	}
	if n, _ := f.Read(make([]byte, 1)); n != 0 {
		return fmt.Errorf("%s: grew while packing (expected %d bytes)", e.src, e.size)
	}
	return nil
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func sum(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// writeBlob writes what fill writes into blobs/<sha256 hex>: a temporary file, synced, renamed to
// its digest (kept as it is if a blob of that digest exists). done gets the digest and size.
func writeBlob(blobs string, fill func(io.Writer) error, done func(v1.Hash, int64)) error {
	f, err := os.CreateTemp(blobs, ".tmp-blob-*")
	if err != nil {
		return err
	}
	defer func() {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}()
	h := sha256.New()
	c := &counter{w: io.MultiWriter(f, h)}
	if err := fill(c); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d := sum(h)
	final := filepath.Join(blobs, d.Hex)
	if st, err := os.Stat(final); err == nil && st.Mode().IsRegular() && st.Size() == c.n {
		done(d, c.n)
		return nil
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(blobs); err != nil {
		return err
	}
	done(d, c.n)
	return nil
}

// writeJSON writes v as a blob and returns its descriptor.
func writeJSON(blobs string, mt types.MediaType, v any) (v1.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return v1.Descriptor{}, err
	}
	desc := v1.Descriptor{MediaType: mt}
	err = writeBlob(blobs, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}, func(d v1.Hash, n int64) { desc.Digest, desc.Size = d, n })
	return desc, err
}

const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

// initLayout creates the layout at dir if it has none: oci-layout, an empty index.json, blobs/.
func initLayout(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	p := filepath.Join(dir, "oci-layout")
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := atomicfile.Write("", p, []byte(ociLayoutFile), 0o644); err != nil {
			return fmt.Errorf("OCI layout %s: %w", dir, err)
		}
	case err != nil:
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	default:
		var l struct{ ImageLayoutVersion string }
		if err := json.Unmarshal(b, &l); err != nil || l.ImageLayoutVersion != "1.0.0" {
			return fmt.Errorf("%s: expected an OCI layout marker {\"imageLayoutVersion\":\"1.0.0\"}, found %.80q", p, b)
		}
	}
	return nil
}

// addToIndex adds desc to dir's index.json under name, in place of any entry of that name (by
// either annotation), and reports whether there was one.
func addToIndex(ctx context.Context, dir, name string, desc v1.Descriptor, log *slog.Logger) (bool, error) {
	p := filepath.Join(dir, "index.json")
	unlock, err := flock.Lock(ctx, p+".lock", 0o644, func() { log.Info("waiting for another pack into the layout", "lock", p+".lock") })
	if err != nil {
		return false, err
	}
	defer func() { _ = unlock() }()
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return false, err
	default:
		if err := json.Unmarshal(b, &idx); err != nil {
			return false, fmt.Errorf("%s: expected an OCI image index: %w", p, err)
		}
	}
	replaced, at := false, len(idx.Manifests)
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.Annotations[AnnotationRefName] == name || m.Annotations[AnnotationContainerName] == name {
			if !replaced {
				at = len(kept)
			}
			replaced = true
			continue
		}
		kept = append(kept, m)
	}
	idx.Manifests = slices.Insert(kept, min(at, len(kept)), desc)
	out, err := json.Marshal(idx)
	if err != nil {
		return false, err
	}
	if bytes.Equal(out, b) {
		return replaced, nil
	}
	if err := atomicfile.Write("", p, out, 0o644); err != nil {
		return false, fmt.Errorf("writing %s: %w", p, err)
	}
	return replaced, nil
}
