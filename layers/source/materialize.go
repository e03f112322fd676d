package source

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/ulikunitz/xz"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/compose"
	"github.com/imgctl/imgctl/layers/deb"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/limits"
	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/tarentry"
)

// converterVersion is part of every cache key of converted tars: bump it when the
// conversion of inputs into source tars changes.
// (2: entries are checked the way compose places them, so tars cached by 1 are checked again.)
const converterVersion = "source-tar/2"

// ErrUnpinned is returned when a remote source has no digest and none can be found offline.
var ErrUnpinned = errors.New("source is not pinned")

// Pin is what the lock file records for one source: the digest of the exact bytes fetched.
type Pin struct {
	URI      string        `json:"uri"`
	Digest   digest.Digest `json:"digest"`
	Resolved string        `json:"resolved,omitempty"` // e.g. containerd=1.6.20~ds1-1+b1
	URL      string        `json:"url,omitempty"`      // where the bytes came from, when not the URI itself
}

// Tar is a source turned into a validated layer tar in the cache.
type Tar struct {
	Pin
	Digest  digest.Digest // of the tar
	Size    int64
	Entries int
}

// Env holds what resolving and materializing sources needs. It is safe for concurrent use.
type Env struct {
	Cache   *cache.Cache
	Fetch   *fetch.Client
	Keyring string    // Debian archive keyring; "" = the system's
	MTime   time.Time // SOURCE_DATE_EPOCH, passed to mmdebstrap
	// NodeAgent is the static imgctl-node binary the bootstrap layer (imgctl://bootstrap) carries.
	NodeAgent string
	// Limits bound each source's layer tar: at most MaxSourceSize bytes and at most
	// MaxExpansionRatio times its input (plus limits.ExpansionSlack). The zero value means
	// the defaults. Downloads are bounded by Fetch.Limits: give both the same value.
	Limits limits.Limits
	Logger *slog.Logger

	repos sync.Map // mirror|suite|component|arch -> *deb.Repo
}

func (e *Env) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}

// Resolve pins u. A lock entry for the same URI is trusted for remote sources (that is what
// a lock is for); local files and directories are hashed again, so edits show up.
func (e *Env) Resolve(ctx context.Context, u URI, locked *Pin) (Pin, error) {
	p, err := e.resolve(ctx, u, locked)
	if err != nil {
		return Pin{}, fmt.Errorf("resolving %s: %w", u.Raw, err)
	}
	return p, nil
}

func (e *Env) resolve(ctx context.Context, u URI, locked *Pin) (Pin, error) {
	if locked != nil && locked.URI != u.Raw {
		locked = nil
	}
	pin := Pin{URI: u.Raw}
	switch {
	case u.Kind == KindBootstrap:
		t, err := e.bootstrapTar(ctx, u)
		if err != nil {
			return Pin{}, err
		}
		return t.Pin, nil
	case u.Kind == KindDir:
		t, err := e.dirTar(ctx, u)
		if err != nil {
			return Pin{}, err
		}
		pin.Digest = t.Digest
		return pin, nil
	case u.Kind == KindOCI || u.Kind == KindOCILayout || u.isArchive():
		pin.Digest = u.Digest
		return pin, nil
	case !u.Remote(): // a local file
		d, err := HashFile(ctx, u.Location)
		if err != nil {
			return Pin{}, err
		}
		if u.Digest != "" && u.Digest != d {
			return Pin{}, fmt.Errorf("%s has digest %s, the URI pins %s", u.Location, d, u.Digest)
		}
		pin.Digest = d
		return pin, nil
	case locked != nil && locked.Digest != "":
		if u.Digest != "" && locked.Digest != u.Digest {
			return Pin{}, fmt.Errorf("lock pins %s but the URI pins %s", locked.Digest, u.Digest)
		}
		return *locked, nil
	case u.Digest != "":
		pin.Digest = u.Digest
		return pin, nil
	case u.ChecksumURL != "":
		d, err := e.publishedChecksum(ctx, u)
		if err != nil {
			return Pin{}, err
		}
		pin.Digest, pin.Resolved = d, "sha256 from "+u.ChecksumURL
		return pin, nil
	case u.Kind == KindDebRepo:
		repo := e.repo(u)
		var r deb.Resolved
		var err error
		if u.Follow != "" {
			r, err = repo.ResolveFollow(ctx, u.Package, u.Version, u.Follow)
		} else {
			r, err = repo.Resolve(ctx, u.Package, u.Version)
		}
		if err != nil {
			return Pin{}, err
		}
		pin.Digest = digest.NewDigestFromEncoded(digest.SHA256, r.SHA256)
		pin.URL, pin.Resolved = r.URL, r.Package+"="+r.Version
		return pin, nil
	case u.Kind == KindMmdebstrap:
		d, err := e.mmdebstrap(ctx, u, "")
		if err != nil {
			return Pin{}, err
		}
		pin.Digest = d
		return pin, nil
	}
	return Pin{}, ErrUnpinned
}

var hexSHA256 = regexp.MustCompile(`(?i)\b[0-9a-f]{64}\b`)

// publishedChecksum reads a checksum file ("HEX" or "HEX  name" lines) and takes the
// entry for the file's name, or the only digest in it.
func (e *Env) publishedChecksum(ctx context.Context, u URI) (digest.Digest, error) {
	rc, err := e.Fetch.Get(ctx, u.ChecksumURL)
	if err != nil {
		return "", fmt.Errorf("checksum file: %w", err)
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return "", fmt.Errorf("checksum file %s: %w", u.ChecksumURL, err)
	}
	base := path.Base(u.Location)
	var only []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !hexSHA256.MatchString(fields[0]) || len(fields[0]) != 64 {
			continue
		}
		if len(fields) > 1 && strings.TrimPrefix(fields[1], "*") == base {
			return digest.NewDigestFromEncoded(digest.SHA256, strings.ToLower(fields[0])), nil
		}
		only = append(only, fields[0])
	}
	if len(only) != 1 {
		return "", fmt.Errorf("checksum file %s: expected one sha256 (or a line for %s), found %d", u.ChecksumURL, base, len(only))
	}
	return digest.NewDigestFromEncoded(digest.SHA256, strings.ToLower(only[0])), nil
}

func (e *Env) repo(u URI) *deb.Repo {
	key := strings.Join([]string{u.Location, u.Suite, u.Component, u.Arch}, "|")
	r, _ := e.repos.LoadOrStore(key, &deb.Repo{
		BaseURL: u.Location, Suite: u.Suite, Component: u.Component, Arch: u.Arch,
		Keyring: e.Keyring, Getter: e.Fetch, Logger: e.logger(),
	})
	return r.(*deb.Repo)
}

// Materialize turns a pinned source into a validated layer tar in the cache, fetching what
// the cache lacks. The result is cached under the pin, so a second call does no work.
func (e *Env) Materialize(ctx context.Context, u URI, pin Pin) (Tar, error) {
	t, err := e.materialize(ctx, u, pin)
	if err != nil {
		return Tar{}, fmt.Errorf("%s: %w", u.Raw, err)
	}
	return t, nil
}

func (e *Env) materialize(ctx context.Context, u URI, pin Pin) (Tar, error) {
	switch u.Kind {
	case KindDir:
		return e.dirTar(ctx, u)
	case KindBootstrap:
		return e.bootstrapTar(ctx, u)
	}
	key := strings.Join([]string{converterVersion, string(u.Kind), u.Dest, fmt.Sprintf("%o", u.Mode), u.Prefix, string(pin.Digest)}, "\n")
	if u.isArchive() {
		// The archive file's bytes carry the image name and SOURCE_DATE_EPOCH.
		key += "\n" + u.ImageName + "\n" + strconv.FormatInt(e.archiveMTime().Unix(), 10)
	}
	if t, ok := e.cachedTar(ctx, key, pin); ok {
		return t, nil
	}
	unlock, err := e.Cache.Lock(ctx, "source\n"+key)
	if err != nil {
		return Tar{}, err
	}
	defer func() { _ = unlock() }()
	if t, ok := e.cachedTar(ctx, key, pin); ok {
		return t, nil
	}
	start := time.Now()
	in, err := e.input(ctx, u, pin)
	if err != nil {
		return Tar{}, err
	}
	defer in.Close()
	step := progress.Start(ctx, "convert "+u.label(pin))
	t, err := e.convertInput(ctx, u, pin, key, in, step)
	step.Done(err)
	if err != nil {
		return Tar{}, err
	}
	e.logger().Debug("materialized source", "uri", u.Raw, "tar", t.Digest, "entries", t.Entries, "duration", time.Since(start))
	return t, nil
}

// convertInput converts in into a layer tar in the cache, recorded under key; step counts the
// tar's bytes and entries.
func (e *Env) convertInput(ctx context.Context, u URI, pin Pin, key string, in *input, step *progress.Step) (Tar, error) {
	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return Tar{}, err
	}
	defer func() { _ = w.Abort() }()
	inSize := in.size
	if u.Kind == KindOCI || u.Kind == KindOCILayout {
		inSize = -1 // the layers are the input: convertOCI bounds each one
	}
	out := e.boundedTarOut(io.MultiWriter(w, step.Writer()), u.Prefix, inSize)
	out.step = step
	if err := e.convert(ctx, u, in, out); err != nil {
		return Tar{}, err
	}
	if err := out.Close(); err != nil {
		return Tar{}, err
	}
	if err := in.Verify(); err != nil {
		return Tar{}, err
	}
	d, size, err := w.Commit("", -1)
	if err != nil {
		return Tar{}, err
	}
	if err := e.Cache.SetRef("source", key, d); err != nil {
		return Tar{}, err
	}
	return Tar{Pin: pin, Digest: d, Size: size, Entries: out.entries}, nil
}

// label names a source briefly for progress lines: the package a .deb resolved to, the
// image of an OCI source, the file name of anything else.
func (u URI) label(pin Pin) string {
	switch {
	case u.Kind == KindDebRepo && pin.Resolved != "":
		return pin.Resolved
	case u.Kind == KindDebRepo:
		return u.Package
	case u.Kind == KindMmdebstrap:
		return "Debian base " + u.Suite
	case u.Kind == KindOCI:
		return u.Location
	}
	if b := path.Base(u.Location); b != "." && b != "/" {
		return b
	}
	return u.Raw
}

func (e *Env) cachedTar(ctx context.Context, key string, pin Pin) (Tar, bool) {
	d, err := e.Cache.Ref("source", key)
	if err != nil {
		return Tar{}, false
	}
	f, err := e.Cache.Open(d)
	if err != nil {
		return Tar{}, false
	}
	defer f.Close()
	n, size, err := CountEntries(ctx, f)
	if err != nil {
		e.logger().Warn("cached source tar unreadable, rebuilding", "tar", d, "err", err)
		return Tar{}, false
	}
	return Tar{Pin: pin, Digest: d, Size: size, Entries: n}, true
}

// CountEntries counts the entries of a tar; visit, if given, may read an entry's content
// (names without a leading "./"). Contents nobody reads are skipped, not read.
func CountEntries(ctx context.Context, f *os.File, visit ...func(name string, r io.Reader) error) (entries int, size int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	err = tarentry.Each(ctx, io.NewSectionReader(f, 0, st.Size()), func(hdr *tar.Header, content io.Reader) error {
		entries++
		for _, v := range visit {
			if err := v(strings.TrimPrefix(hdr.Name, "./"), content); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return entries, st.Size(), nil
}

// input is the verified byte stream of a pinned source.
type input struct {
	io.Reader
	size   int64 // bytes in the stream
	close  func() error
	verify func() error
}

func (i *input) Close() error {
	if i.close == nil {
		return nil
	}
	return i.close()
}

// Verify reports whether everything read hashed to the pin (fail closed for local files,
// which may change between Resolve and Materialize).
func (i *input) Verify() error {
	if i.verify == nil {
		return nil
	}
	return i.verify()
}

func (e *Env) input(ctx context.Context, u URI, pin Pin) (*input, error) {
	switch u.Kind {
	case KindOCI, KindOCILayout:
		return &input{Reader: bytes.NewReader(nil)}, nil
	case KindOCIArchive, KindOCILayoutArchive:
		return e.ociArchive(ctx, u)
	case KindMmdebstrap:
		if !e.Cache.Has(pin.Digest) {
			if _, err := e.mmdebstrap(ctx, u, pin.Digest); err != nil {
				return nil, err
			}
		}
		return e.cacheInput(pin.Digest)
	}
	if !u.Remote() {
		f, st, err := localfile.Open(u.Location)
		if err != nil {
			return nil, err
		}
		v := pin.Digest.Verifier()
		return &input{
			Reader: io.TeeReader(bufio.NewReaderSize(f, 1<<20), v),
			size:   st.Size(),
			close:  f.Close,
			verify: func() error {
				if !v.Verified() {
					return fmt.Errorf("%s changed while it was read (expected %s)", u.Location, pin.Digest)
				}
				return nil
			},
		}, nil
	}
	from := u.Location
	if pin.URL != "" {
		from = pin.URL
	}
	if _, err := e.Fetch.Fetch(ctx, e.Cache, from, pin.Digest); err != nil {
		return nil, err
	}
	return e.cacheInput(pin.Digest)
}

func (e *Env) cacheInput(d digest.Digest) (*input, error) {
	f, err := e.Cache.Open(d)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &input{Reader: bufio.NewReaderSize(f, 1<<20), size: st.Size(), close: f.Close}, nil
}

func (e *Env) convert(ctx context.Context, u URI, in *input, out *tarOut) error {
	switch u.Kind {
	case KindTar, KindMmdebstrap:
		if in.size == 0 {
			return errors.New("the file is empty (0 bytes), not a valid tar")
		}
		r, err := Decompress(in)
		if err != nil {
			return err
		}
		cr := &countReader{r: r}
		if err := out.copyTar(ctx, cr); err != nil {
			return err
		}
		if cr.n == 0 {
			return errors.New("it decompresses to nothing, not a valid tar")
		}
		return nil
	case KindDeb, KindDebRepo:
		pkg, err := deb.Open(in)
		if err != nil {
			return err
		}
		data, err := pkg.Data()
		if err != nil {
			return err
		}
		if err := out.copyTar(ctx, data); err != nil {
			return err
		}
		if err := pkg.Finish(); err != nil {
			return err
		}
		// Drain the rest so a local file's digest covers every byte.
		_, err = io.Copy(io.Discard, in)
		return err
	case KindFile:
		hdr := &tar.Header{Name: u.Dest[1:], Typeflag: tar.TypeReg, Mode: u.Mode, Size: in.size}
		return out.add(hdr, in)
	case KindOCI, KindOCILayout:
		return e.convertOCI(ctx, u, out)
	case KindOCIArchive, KindOCILayoutArchive:
		// One file; its parent directories come from lower layers or are created when the
		// rootfs is composed, as for KindFile.
		hdr := &tar.Header{Name: u.Dest[1:], Typeflag: tar.TypeReg, Mode: u.Mode, Size: in.size, ModTime: e.archiveMTime()}
		return out.add(hdr, in)
	}
	return fmt.Errorf("cannot convert %s sources", u.Kind)
}

// Decompress detects gzip, zstd or xz by magic number; anything else passes through.
func Decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return xz.NewReader(br)
	}
	return br, nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// tarOut writes validated entries, optionally under a prefix. Each entry passes
// tarentry.Clean and then compose's Checker, so a source converts only if composing it
// would accept it (what a lower layer brings aside).
type tarOut struct {
	tw      *tar.Writer
	check   *compose.Checker
	prefix  string
	entries int
	bound   *boundedWriter // nil: unbounded
	step    *progress.Step // counts entries; nil: none
}

// boundedTarOut is a tarOut whose tar may grow to e.Limits.MaxOutput(inputSize) bytes
// (inputSize -1: to the size limit only, for inputs whose size says nothing).
func (e *Env) boundedTarOut(w io.Writer, prefix string, inputSize int64) *tarOut {
	b := &boundedWriter{w: w, input: inputSize, lim: e.Limits, max: e.Limits.MaxOutput(inputSize)}
	o := newTarOut(b, prefix)
	o.bound = b
	return o
}

// boundedWriter fails with limits.ErrTooLarge instead of letting a layer tar grow past max
// bytes: the size limit per source, or the expansion ratio times the input's size. Both the
// decompressed stream of a compression bomb and the holes of a sparse tar entry (which Go's
// tar reader expands) show up here, before they reach the disk.
type boundedWriter struct {
	w     io.Writer
	n     int64
	max   int64 // -1: unbounded
	input int64 // bytes of input; -1: unknown
	lim   limits.Limits
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if b.max >= 0 && b.n+int64(len(p)) > b.max {
		return 0, b.exceeded(b.n + int64(len(p)))
	}
	n, err := b.w.Write(p)
	b.n += int64(n)
	return n, err
}

// fits refuses, before anything of it is written, an entry whose declared size alone would
// take the tar past its bound (a sparse entry declares its logical size).
func (b *boundedWriter) fits(hdr *tar.Header) error {
	if b == nil || b.max < 0 || hdr.Typeflag != tar.TypeReg || b.n+hdr.Size <= b.max {
		return nil
	}
	return b.exceeded(b.n + hdr.Size)
}

// exceeded explains why a tar of total bytes is refused.
func (b *boundedWriter) exceeded(total int64) error {
	l := b.lim.WithDefaults()
	if b.max == l.SourceSize() {
		return fmt.Errorf("%w: the layer tar would be %s or more, over the limit of %s per source (--max-source-size)",
			limits.ErrTooLarge, limits.Bytes(total), limits.Bytes(b.max))
	}
	return fmt.Errorf("%w: the layer tar would be %s or more from %s of input, %.0f× the input, over the limit of %s× the input + %s (--max-expansion-ratio): a compression bomb or a sparse file?",
		limits.ErrTooLarge, limits.Bytes(total), limits.Bytes(b.input), float64(total)/float64(max(b.input, 1)), l.MaxExpansionRatio, limits.Bytes(limits.ExpansionSlack))
}

func newTarOut(w io.Writer, prefix string) *tarOut {
	return &tarOut{tw: tar.NewWriter(w), check: compose.NewChecker(), prefix: strings.Trim(prefix, "/")}
}

func (o *tarOut) add(hdr *tar.Header, body io.Reader) error {
	name := hdr.Name
	if err := tarentry.Clean(hdr); err != nil {
		return err
	}
	if o.prefix != "" {
		hdr.Name = path.Join(o.prefix, hdr.Name)
		if hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = path.Join(o.prefix, hdr.Linkname)
		}
	}
	if err := o.check.Add(name, hdr); err != nil {
		return err
	}
	if hdr.Name == "" {
		hdr.Name = "./"
	} else if hdr.Typeflag == tar.TypeDir {
		hdr.Name += "/"
	}
	hdr.Format = tar.FormatUnknown
	//lint:ignore SA1019 the PAX records carry the same xattrs
	hdr.Xattrs = nil
	if err := o.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("entry %q: %w", name, err)
	}
	o.entries++
	o.step.Add(0, 1)
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		n, err := io.Copy(o.tw, body)
		if err != nil {
			return fmt.Errorf("entry %q: %w", name, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("entry %q: short content (%d of %d bytes)", name, n, hdr.Size)
		}
	}
	return nil
}

func (o *tarOut) copyTar(ctx context.Context, r io.Reader) error {
	return tarentry.Each(ctx, r, func(hdr *tar.Header, content io.Reader) error {
		if err := o.bound.fits(hdr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		return o.add(hdr, content)
	})
}

func (o *tarOut) Close() error { return o.tw.Close() }

// dirTar packs a local directory (development sources): sorted, owned by root, modes kept.
// It is keyed by nothing but its content, so it is rebuilt on every build.
func (e *Env) dirTar(ctx context.Context, u URI) (Tar, error) {
	root := filepath.Clean(u.Location) // walkSorted refuses a root that is not a directory
	w, err := e.Cache.NewWriter(ctx)
	if err != nil {
		return Tar{}, err
	}
	defer func() { _ = w.Abort() }()
	out := e.boundedTarOut(w, u.Prefix, -1)
	err = walkSorted(root, "", func(rel string, info fs.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr := &tar.Header{Name: rel, Mode: int64(info.Mode().Perm()), Uid: 0, Gid: 0}
		if info.Mode()&fs.ModeSetuid != 0 {
			hdr.Mode |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			hdr.Mode |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		full := filepath.Join(root, rel)
		switch {
		case info.IsDir():
			hdr.Typeflag = tar.TypeDir
			return out.add(hdr, nil)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(full)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			return out.add(hdr, nil)
		case info.Mode().IsRegular():
			f, st, err := localfile.OpenChecked(full)
			if err != nil {
				return err
			}
			defer f.Close()
			hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size()
			return out.add(hdr, f)
		}
		// Never opened: a FIFO would block, a device read forever.
		return localfile.TypeError(full, info.Mode(), "a regular file, directory or symlink")
	})
	if err != nil {
		return Tar{}, err
	}
	if err := out.Close(); err != nil {
		return Tar{}, err
	}
	d, size, err := w.Commit("", -1)
	if err != nil {
		return Tar{}, err
	}
	return Tar{Pin: Pin{URI: u.Raw, Digest: d}, Digest: d, Size: size, Entries: out.entries}, nil
}

func walkSorted(root, rel string, fn func(rel string, info fs.FileInfo) error) error {
	ents, err := localfile.ReadDir(filepath.Join(root, rel))
	if err != nil {
		return err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	slices.Sort(names)
	for _, n := range names {
		r := path.Join(rel, n)
		info, err := os.Lstat(filepath.Join(root, r))
		if err != nil {
			return err
		}
		if err := fn(r, info); err != nil {
			return err
		}
		if info.IsDir() {
			if err := walkSorted(root, r, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// HashFile returns the sha256 digest of the file at p, stopping when ctx ends.
// Only a regular file is read: anything else is refused by type, without blocking on it.
func HashFile(ctx context.Context, p string) (digest.Digest, error) {
	f, _, err := localfile.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	dg := digest.SHA256.Digester()
	if _, err := io.Copy(dg.Hash(), &ctxReader{ctx: ctx, r: f}); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return dg.Digest(), nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
