package deb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

const (
	arMagic      = "!<arch>\n"
	arHeaderSize = 60

	// maxMemberSize rejects absurd ar member sizes before anything is read.
	maxMemberSize = 1 << 40
	// maxSmallMember bounds members that are read into memory
	// (debian-binary) or that only hold metadata (control.tar).
	maxDebianBinary  = 1 << 10
	maxControlMember = 64 << 20
	// maxControlTar bounds the decompressed control.tar stream.
	maxControlTar = 256 << 20
	// maxControlFile bounds the control file inside control.tar.
	maxControlFile = 4 << 20
	// maxDictSize bounds xz and zstd decoder windows.
	maxDictSize = 256 << 20
)

// Package is the metadata of a Debian binary package.
type Package struct {
	Control      Paragraph // the parsed DEBIAN/control file
	Name         string    // Package field
	Version      string    // Version field
	Architecture string    // Architecture field
}

// Reader reads a Debian binary package (.deb) from a stream. [Open]
// consumes the package up to and including control.tar; [Reader.Data]
// then streams data.tar without buffering it.
type Reader struct {
	ar       *arReader
	pkg      Package
	dataUsed bool
	dataName string // the data.tar member Data returned
}

// Open reads the ar header, the debian-binary member (which must be
// "2.0\n") and the control.tar member (uncompressed, .gz, .xz or .zst) of
// the package in r. Members whose names start with '_' are skipped as
// deb(5) requires. The rest of r is only read by [Reader.Data].
func Open(r io.Reader) (*Reader, error) {
	ar, err := newArReader(r)
	if err != nil {
		return nil, err
	}
	m, err := ar.next()
	if err != nil {
		return nil, fmt.Errorf("deb: reading debian-binary: %w", err)
	}
	if m.name != "debian-binary" {
		return nil, fmt.Errorf("deb: not a Debian package: first member is %q, want debian-binary", m.name)
	}
	if m.size > maxDebianBinary {
		return nil, fmt.Errorf("deb: debian-binary member is %d bytes, too large", m.size)
	}
	vb, err := io.ReadAll(m)
	if err != nil {
		return nil, fmt.Errorf("deb: reading debian-binary: %w", err)
	}
	// deb(5): the member starts with "2.0\n"; later minor versions
	// (2.x) stay compatible, anything else is not a format we know.
	ver, _, _ := strings.Cut(string(vb), "\n")
	if !strings.HasPrefix(string(vb), "2.") || !strings.Contains(string(vb), "\n") {
		return nil, fmt.Errorf("deb: unsupported package format version %q (want 2.0)", truncate([]byte(ver)))
	}

	for {
		m, err = ar.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errors.New("deb: missing control.tar member")
			}
			return nil, fmt.Errorf("deb: reading control member: %w", err)
		}
		if !strings.HasPrefix(m.name, "_") {
			break
		}
	}
	if !strings.HasPrefix(m.name, "control.tar") {
		return nil, fmt.Errorf("deb: expected control.tar member, found %q", m.name)
	}
	if m.size > maxControlMember {
		return nil, fmt.Errorf("deb: member %s is %d bytes, more than the %d allowed", m.name, m.size, maxControlMember)
	}
	ctl, err := readControl(m)
	if err != nil {
		return nil, err
	}
	return &Reader{
		ar: ar,
		pkg: Package{
			Control:      ctl,
			Name:         ctl.Get("Package"),
			Version:      ctl.Get("Version"),
			Architecture: ctl.Get("Architecture"),
		},
	}, nil
}

// Control returns the parsed control file.
func (r *Reader) Control() Paragraph { return r.pkg.Control }

// Package returns the package metadata.
func (r *Reader) Package() Package { return r.pkg }

// Data returns the decompressed data.tar stream (data.tar, data.tar.gz,
// .xz, .zst or .bz2); read it with archive/tar. It may be called once. The
// stream ends with an error if the member is truncated or corrupt.
func (r *Reader) Data() (io.Reader, error) {
	if r.dataUsed {
		return nil, errors.New("deb: Data already called")
	}
	r.dataUsed = true
	var m *arMember
	for {
		var err error
		m, err = r.ar.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errors.New("deb: missing data.tar member")
			}
			return nil, fmt.Errorf("deb: reading data member: %w", err)
		}
		if !strings.HasPrefix(m.name, "_") {
			break
		}
	}
	if !strings.HasPrefix(m.name, "data.tar") {
		return nil, fmt.Errorf("deb: expected data.tar member, found %q", m.name)
	}
	r.dataName = m.name
	return decompress(m.name, "data.tar", m)
}

// Finish reads the rest of the package after the data.tar member [Reader.Data] returned
// (whatever of it was left unread) and refuses a second data.tar member: deb(5) lets readers
// ignore members after data.tar, so a second one would be contents that some tools install
// and others do not. Other trailing members are read and ignored, as deb(5) requires.
func (r *Reader) Finish() error {
	if r.dataName == "" {
		return errors.New("deb: Finish called before Data")
	}
	for {
		m, err := r.ar.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deb: after %s: %w", r.dataName, err)
		}
		if strings.HasPrefix(m.name, "data.tar") {
			return fmt.Errorf("deb: two data members, %q and %q", r.dataName, m.name)
		}
	}
}

// decompress wraps m according to the compression suffix of its name.
func decompress(name, base string, m io.Reader) (io.Reader, error) {
	var (
		rd  io.Reader
		err error
	)
	switch strings.TrimPrefix(name, base) {
	case "":
		rd = m
	case ".gz":
		rd, err = gzip.NewReader(m)
	case ".xz":
		rd, err = newXZReader(m)
	case ".zst":
		var d *zstd.Decoder
		d, err = zstd.NewReader(m,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxDictSize),
			zstd.WithDecoderLowmem(true))
		if err == nil {
			rd = &zstdReader{d: d}
		}
	case ".bz2":
		rd = bzip2.NewReader(m)
	default:
		return nil, fmt.Errorf("deb: unsupported %s member %s", base, name)
	}
	if err != nil {
		return nil, fmt.Errorf("deb: %s: %w", name, err)
	}
	return &errPrefixReader{r: rd, name: name}, nil
}

// zstdReader releases the decoder once the stream ends.
type zstdReader struct{ d *zstd.Decoder }

func (z *zstdReader) Read(p []byte) (int, error) {
	if z.d == nil {
		return 0, io.EOF
	}
	n, err := z.d.Read(p)
	if err != nil {
		z.d.Close()
		z.d = nil
	}
	return n, err
}

// errPrefixReader names the member in decompression errors.
type errPrefixReader struct {
	r    io.Reader
	name string
}

func (e *errPrefixReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("deb: %s: %w", e.name, err)
	}
	return n, err
}

// newXZReader checks the dictionary size of the first block before
// handing the stream to the xz decoder, which allocates the dictionary
// up front.
func newXZReader(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	// Stream header (12 bytes) + block header (at most 1024 bytes).
	head, _ := br.Peek(12 + 1024)
	if err := checkXZDict(head); err != nil {
		return nil, err
	}
	return xz.NewReader(br)
}

// checkXZDict parses the first block header of an xz stream and rejects
// LZMA2 dictionaries larger than maxDictSize. Malformed headers are left
// for the decoder to report.
func checkXZDict(b []byte) error {
	if len(b) < 13 {
		return nil
	}
	hsize := (int(b[12]) + 1) * 4
	if b[12] == 0 || len(b) < 12+hsize {
		return nil
	}
	h := b[13 : 12+hsize-4] // block flags .. filters, without CRC32
	if len(h) < 1 {
		return nil
	}
	flags := h[0]
	h = h[1:]
	nfilters := int(flags&3) + 1
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} {
		if present {
			var ok bool
			if _, h, ok = xzVarint(h); !ok {
				return nil
			}
		}
	}
	for range nfilters {
		id, rest, ok := xzVarint(h)
		if !ok {
			return nil
		}
		psize, rest, ok := xzVarint(rest)
		if !ok || uint64(len(rest)) < psize {
			return nil
		}
		props := rest[:psize]
		h = rest[psize:]
		if id == 0x21 && len(props) == 1 {
			d := props[0]
			if d > 40 {
				return nil
			}
			var size uint64 = 1<<32 - 1
			if d < 40 {
				size = uint64(2|d&1) << (d/2 + 11)
			}
			if size > maxDictSize {
				return fmt.Errorf("xz dictionary of %d bytes exceeds the %d allowed", size, maxDictSize)
			}
		}
	}
	return nil
}

func xzVarint(b []byte) (uint64, []byte, bool) {
	var v uint64
	for i := 0; i < len(b) && i < 9; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, b[i+1:], true
		}
	}
	return 0, nil, false
}

// readControl extracts and parses the control file from a control.tar
// member.
func readControl(m *arMember) (Paragraph, error) {
	rd, err := decompress(m.name, "control.tar", m)
	if err != nil {
		return nil, err
	}
	lim := &limitErrReader{r: rd, n: maxControlTar, name: m.name}
	tr := tar.NewReader(lim)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("deb: %s has no control file", m.name)
		}
		if err != nil {
			return nil, fmt.Errorf("deb: reading %s: %w", m.name, err)
		}
		if strings.TrimPrefix(h.Name, "./") != "control" || h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Size > maxControlFile {
			return nil, fmt.Errorf("deb: control file in %s is %d bytes, more than the %d allowed", m.name, h.Size, maxControlFile)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("deb: reading control file from %s: %w", m.name, err)
		}
		ps, err := ReadParagraphs(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("deb: control file: %w", err)
		}
		if len(ps) != 1 {
			return nil, fmt.Errorf("deb: control file has %d paragraphs, want 1", len(ps))
		}
		if ps[0].Get("Package") == "" {
			return nil, errors.New("deb: control file has no Package field")
		}
		return ps[0], nil
	}
}

// limitErrReader fails once more than n bytes have been read.
type limitErrReader struct {
	r    io.Reader
	n    int64
	name string
}

func (l *limitErrReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("deb: %s decompresses to more than %d bytes", l.name, maxControlTar)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// arReader reads the members of a common (System V / GNU) ar archive
// sequentially.
type arReader struct {
	r   io.Reader
	cur *arMember
	off int64 // offset of the next header, for error messages
}

type arMember struct {
	name      string
	size      int64
	remaining int64
	r         io.Reader
	offset    int64
}

func newArReader(r io.Reader) (*arReader, error) {
	var magic [len(arMagic)]byte
	n, err := io.ReadFull(r, magic[:])
	if err != nil && n == 0 {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("deb: not a Debian package: empty input")
		}
		return nil, fmt.Errorf("deb: reading ar magic: %w", err)
	}
	if string(magic[:n]) != arMagic {
		return nil, errors.New("deb: not a Debian package: missing ar magic")
	}
	return &arReader{r: r, off: int64(len(arMagic))}, nil
}

// next skips what is left of the current member (and its padding byte)
// and returns the next one. It returns io.EOF at the end of the archive.
func (a *arReader) next() (*arMember, error) {
	if c := a.cur; c != nil {
		if c.remaining > 0 {
			if _, err := io.Copy(io.Discard, c); err != nil {
				return nil, err
			}
		}
		if c.size%2 == 1 {
			var pad [1]byte
			if _, err := io.ReadFull(a.r, pad[:]); err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("reading padding after %s: %w", c.name, err)
			}
			// A missing final padding byte is tolerated, as dpkg does.
		}
		a.off += c.size + c.size%2
		a.cur = nil
	}
	var h [arHeaderSize]byte
	n, err := io.ReadFull(a.r, h[:])
	if err != nil {
		if errors.Is(err, io.EOF) && n == 0 {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("truncated ar member header at offset %d", a.off)
	}
	if h[58] != '`' || h[59] != '\n' {
		return nil, fmt.Errorf("corrupt ar member header at offset %d", a.off)
	}
	name := strings.TrimRight(string(h[0:16]), " ")
	name = strings.TrimSuffix(name, "/") // GNU ar
	sizeField := strings.TrimSpace(string(h[48:58]))
	size, err := strconv.ParseInt(sizeField, 10, 64)
	if err != nil || size < 0 || size > maxMemberSize {
		return nil, fmt.Errorf("ar member %q at offset %d has invalid size %q", name, a.off, sizeField)
	}
	a.off += arHeaderSize
	m := &arMember{name: name, size: size, remaining: size, r: a.r, offset: a.off}
	a.cur = m
	return m, nil
}

// Read reads the member's content and reports a truncated archive as an
// error rather than a short member.
func (m *arMember) Read(p []byte) (int, error) {
	if m.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > m.remaining {
		p = p[:m.remaining]
	}
	n, err := m.r.Read(p)
	m.remaining -= int64(n)
	if errors.Is(err, io.EOF) {
		if m.remaining > 0 {
			return n, fmt.Errorf("truncated member %s: %d of %d bytes missing: %w", m.name, m.remaining, m.size, io.ErrUnexpectedEOF)
		}
		err = nil
	}
	if err == nil && m.remaining == 0 {
		err = io.EOF
	}
	return n, err
}
