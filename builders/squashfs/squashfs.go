// Package squashfs writes SquashFS 4.0 images straight from the canonical rootfs tar stream,
// with parallel, deterministic block compression; it produces the read-only root of node images.
package squashfs

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/imgctl/imgctl/layers/progress"
)

// Options configures Write. The zero value writes zstd at level 15 with
// 128 KiB blocks on all CPUs.
type Options struct {
	// Compression is one of Compressors(); "" means "zstd".
	Compression string
	// Level is the compression level; 0 means mksquashfs's default for the
	// compressor: zstd 15 (1..22), gzip 9 (1..9), lz4 0 = fast (1..9 = HC),
	// xz ignores it (dictionary = block size, CRC32 like mksquashfs).
	Level int
	// BlockSize is the data block size, a power of two from 4 KiB to 1 MiB;
	// 0 means 128 KiB.
	BlockSize int
	// Workers is the number of parallel block compressors; 0 means
	// runtime.NumCPU(). The image does not depend on it.
	Workers int
	// MTime is the superblock modification time (SOURCE_DATE_EPOCH).
	MTime int64
	// Logger receives debug summaries and warnings; nil discards them.
	Logger *slog.Logger
	// Blocks, if not nil, supplies the compressed form of blocks compressed before and
	// receives the ones compressed now (see BlockCache). The image does not depend on it.
	Blocks BlockCache
	// Late, if not nil, sorts regular files (by path without a leading "/", like
	// "usr/bin/kubelet") into groups: 0 keeps a file's data in path order, 1..N store it
	// after every group 0 file's data, group after group in ascending order and in stream
	// order within a group. Each group starts a fragment block of its own, at a 4 KiB
	// boundary of the image (zeros pad the data before it): a build that changes only files
	// of group g leaves every data byte before group g as it was, and the data of the groups
	// after g moves by a multiple of 4 KiB, so their 4 KiB blocks are found again by content
	// (an in-place update reuses the running root's blocks by hash; an incremental upload of
	// the image sends little). Directories and inodes keep path order. The files of groups
	// 1..N are spooled to a temporary file in TempDir. A negative group is an error.
	Late func(name string) int
	// TempDir is where late files are spooled; "" means os.TempDir().
	TempDir string
}

// Result describes a written image.
type Result struct {
	// Size is the number of bytes written to dst, padding to 4 KiB included.
	Size int64
	// Inodes counts distinct inodes (hard links share one).
	Inodes int
	// Fragments counts fragment blocks.
	Fragments int
	// DuplicateFiles counts regular files whose data was shared with an
	// earlier file of identical content.
	DuplicateFiles int
	// CachedBlocks counts data and fragment blocks taken from Options.Blocks;
	// CompressedBlocks the ones compressed (and offered to it).
	CachedBlocks, CompressedBlocks int
}

const (
	metaSize     = 8192
	noFragment   = 0xFFFFFFFF
	noXattr      = 0xFFFFFFFF
	superSize    = 96
	devBlockSize = 4096
	maxNameLen   = 256
)

// Basic inode types; extended types are these plus 7.
const (
	typeDir     = 1
	typeFile    = 2
	typeSymlink = 3
	typeBlock   = 4
	typeChar    = 5
	typeFifo    = 6
	typeSocket  = 7
)

type config struct {
	comp      compressor
	name      string
	level     int
	blockSize int
	blockLog  int
	workers   int
	mtime     uint32
	log       *slog.Logger
	blocks    BlockCache
	late      func(string) int
	tempDir   string
}

func (o Options) config() (config, error) {
	c := config{name: o.Compression, level: o.Level, blockSize: o.BlockSize, workers: o.Workers, log: o.Logger, blocks: o.Blocks,
		late: o.Late, tempDir: o.TempDir}
	if c.name == "" {
		c.name = "zstd"
	}
	comp, ok := compressors[c.name]
	if !ok {
		return c, fmt.Errorf("squashfs: unknown compression %q (supported: %s)", c.name, strings.Join(Compressors(), ", "))
	}
	c.comp = comp
	if c.level == 0 {
		c.level = comp.defaultLevel
	}
	if err := CheckLevel(c.name, c.level); err != nil {
		return c, fmt.Errorf("squashfs: %w", err)
	}
	if c.blockSize == 0 {
		c.blockSize = 128 << 10
	}
	if c.blockSize < 4<<10 || c.blockSize > 1<<20 || c.blockSize&(c.blockSize-1) != 0 {
		return c, fmt.Errorf("squashfs: block size %d is not a power of two from 4 KiB to 1 MiB", c.blockSize)
	}
	c.blockLog = bits.TrailingZeros(uint(c.blockSize))
	if c.workers <= 0 {
		c.workers = runtime.NumCPU()
	}
	c.mtime = clampTime(o.MTime)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

func clampTime(t int64) uint32 {
	return uint32(min(max(t, 0), math.MaxUint32))
}

// inode is one filesystem object; hard links are several dirents sharing it.
type inode struct {
	typ    uint16 // basic type
	mode   uint16 // permission bits incl. suid/sgid/sticky
	uid    uint32
	gid    uint32
	mtime  uint32
	nlink  uint32
	xattrs []xattr
	target string    // symlink
	rdev   uint32    // devices, kernel new_encode_dev format
	file   *fileData // regular files
	kids   []dirent  // directories

	num     uint32 // inode number, assigned before serialization
	ref     uint64 // inode table reference, set when written
	written bool
}

type dirent struct {
	name string
	ino  *inode
}

type xattr struct {
	typ   uint16 // 0 user, 1 trusted, 2 security
	name  string // without the prefix
	value string
}

// Write reads the canonical rootfs tar stream from src and writes a squashfs
// image to dst starting at offset 0; the superblock is written last. If dst
// has a Truncate(int64) error method (like *os.File) it is truncated to the
// image size. Memory holds the metadata plus about 2*Workers blocks, never a
// whole file.
func Write(ctx context.Context, dst io.WriterAt, src io.Reader, opts Options) (Result, error) {
	cfg, err := opts.config()
	if err != nil {
		return Result{}, err
	}
	step := progress.Start(ctx, "compress squashfs ("+cfg.name+")")
	res, err := writeSteps(ctx, dst, src, cfg, step)
	step.Done(err)
	return res, err
}

func writeSteps(ctx context.Context, dst io.WriterAt, src io.Reader, cfg config, step *progress.Step) (Result, error) {
	if s, ok := src.(interface{ Size() int64 }); ok { // bytes.Reader, io.SectionReader: a stored rootfs
		step.SetTotal(s.Size())
	}
	b, err := newBuilder(ctx, dst, cfg)
	if err != nil {
		return Result{}, err
	}
	b.step = step
	defer b.closeSpool()
	if err := b.readTar(ctx, io.TeeReader(src, step.Writer())); err != nil {
		b.pipe.abort()
		return Result{}, err
	}
	if err := b.writeLate(ctx); err != nil {
		b.pipe.abort()
		return Result{}, err
	}
	b.logDropped()
	if err := b.finishData(); err != nil {
		return Result{}, err
	}
	res, err := b.writeTables(ctx)
	if err != nil {
		return Result{}, err
	}
	if t, ok := dst.(interface{ Truncate(int64) error }); ok {
		if err := t.Truncate(res.Size); err != nil {
			return Result{}, fmt.Errorf("squashfs: truncating image: %w", err)
		}
	}
	cfg.log.Debug("squashfs image written", "size", res.Size, "inodes", res.Inodes,
		"fragments", res.Fragments, "duplicates", res.DuplicateFiles, "compression", cfg.name, "level", cfg.level,
		"cached_blocks", res.CachedBlocks, "compressed_blocks", res.CompressedBlocks)
	return res, nil
}

// builder holds the state of one Write.
type builder struct {
	cfg     config
	dst     io.WriterAt
	pipe    *pipeline
	root    *inode
	paths   map[string]*inode
	inodes  int
	dups    int
	seen    map[dedupKey]*fileData // files smaller than a block (see pipeline.seen for the others)
	frag    *buffer                // fragment block being filled, nil if none
	fragN   int
	frags   int // fragment blocks submitted
	tail    []byte
	zero    []byte
	start   uint64 // first data byte: after superblock and compressor options
	dataEnd uint64
	// posix ACL xattrs dropped (squashfs has no system.* namespace), and the paths carrying them
	aclDropped int
	aclPaths   []string
	step       *progress.Step // counts the entries read (the input bytes are counted as read)
	// files of late groups (Options.Late), in stream order, spooled to spool until writeLate
	late     []lateFile
	spool    *os.File
	spoolEnd int64
}

func newBuilder(ctx context.Context, dst io.WriterAt, cfg config) (*builder, error) {
	b := &builder{
		cfg:   cfg,
		dst:   dst,
		paths: map[string]*inode{},
		seen:  map[dedupKey]*fileData{},
		tail:  make([]byte, cfg.blockSize),
		zero:  make([]byte, cfg.blockSize),
		start: superSize,
	}
	if opt := cfg.comp.options(cfg.level, cfg.blockSize); opt != nil {
		b.start += 2 + uint64(len(opt))
	}
	b.root = &inode{typ: typeDir, mode: 0o755, mtime: cfg.mtime, nlink: 1}
	b.paths[""] = b.root
	b.inodes = 1
	p, err := newPipeline(ctx, dst, cfg, b.start)
	if err != nil {
		return nil, err
	}
	b.pipe = p
	return b, nil
}

// cleanName maps tar names ("./", "./a/b/", "a/b") to "", "a/b".
func cleanName(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

func (b *builder) readTar(ctx context.Context, src io.Reader) error {
	// Tar headers arrive in 512-byte reads; buffer them into fewer syscalls.
	tr := tar.NewReader(bufio.NewReaderSize(src, 1<<20))
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("squashfs: reading tar: %w", err)
		}
		if err := b.addEntry(ctx, hdr, tr); err != nil {
			return err
		}
		b.step.Add(0, 1)
	}
}

func (b *builder) addEntry(ctx context.Context, hdr *tar.Header, r io.Reader) error {
	name := cleanName(hdr.Name)
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("squashfs: root entry %q is not a directory", hdr.Name)
		}
		b.fillMeta(b.root, hdr)
		b.setXattrs(b.root, hdr)
		return nil
	}
	if _, dup := b.paths[name]; dup {
		return fmt.Errorf("squashfs: duplicate tar entry %q", hdr.Name)
	}
	dirName, base := path.Split(name)
	if len(base) > maxNameLen {
		return fmt.Errorf("squashfs: name of %q longer than %d bytes", hdr.Name, maxNameLen)
	}
	parent, ok := b.paths[strings.TrimSuffix(dirName, "/")]
	if !ok || parent.typ != typeDir {
		return fmt.Errorf("squashfs: parent directory of %q missing or not a directory (entries must come after their parents)", hdr.Name)
	}

	if hdr.Typeflag == tar.TypeLink {
		target, ok := b.paths[cleanName(hdr.Linkname)]
		if !ok {
			return fmt.Errorf("squashfs: hard link %q to %q, which is not an earlier entry", hdr.Name, hdr.Linkname)
		}
		if target.typ == typeDir {
			return fmt.Errorf("squashfs: hard link %q to directory %q", hdr.Name, hdr.Linkname)
		}
		target.nlink++
		parent.kids = append(parent.kids, dirent{base, target})
		b.paths[name] = target
		return nil
	}

	ino := &inode{nlink: 1}
	b.fillMeta(ino, hdr)
	switch hdr.Typeflag {
	case tar.TypeReg: // archive/tar reports old TypeRegA entries as TypeReg
		ino.typ = typeFile
		if g := b.group(name); g != 0 && hdr.Size > 0 {
			if g < 0 {
				return fmt.Errorf("squashfs: file %q: Options.Late gives group %d, want 0 or more", hdr.Name, g)
			}
			if err := b.spoolLate(ino, name, g, r, hdr.Size); err != nil {
				return fmt.Errorf("squashfs: file %q: %w", hdr.Name, err)
			}
			break
		}
		fd, err := b.addFileData(ctx, r, hdr.Size)
		if err != nil {
			return fmt.Errorf("squashfs: file %q: %w", hdr.Name, err)
		}
		ino.file = fd
	case tar.TypeDir:
		ino.typ = typeDir
	case tar.TypeSymlink:
		ino.typ = typeSymlink
		ino.target = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		ino.typ = typeChar
		if hdr.Typeflag == tar.TypeBlock {
			ino.typ = typeBlock
		}
		ino.rdev = encodeDev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	case tar.TypeFifo:
		ino.typ = typeFifo
	default:
		return fmt.Errorf("squashfs: tar entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
	}
	b.setXattrs(ino, hdr)
	parent.kids = append(parent.kids, dirent{base, ino})
	b.paths[name] = ino
	b.inodes++
	return nil
}

func (b *builder) fillMeta(ino *inode, hdr *tar.Header) {
	ino.mode = uint16(hdr.Mode & 0o7777)
	ino.uid = uint32(hdr.Uid)
	ino.gid = uint32(hdr.Gid)
	ino.mtime = clampTime(hdr.ModTime.Unix())
}

// encodeDev packs major:minor like the kernel's new_encode_dev.
func encodeDev(major, minor uint32) uint32 {
	return minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12
}

var xattrPrefixes = []struct {
	prefix string
	typ    uint16
}{{"user.", 0}, {"trusted.", 1}, {"security.", 2}}

const paxXattr = "SCHILY.xattr."

func (b *builder) setXattrs(ino *inode, hdr *tar.Header) {
	ino.xattrs = nil
	for k, v := range hdr.PAXRecords {
		full, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		known := false
		for _, p := range xattrPrefixes {
			if n, ok := strings.CutPrefix(full, p.prefix); ok && n != "" {
				ino.xattrs = append(ino.xattrs, xattr{typ: p.typ, name: n, value: v})
				known = true
				break
			}
		}
		switch {
		case known:
		case strings.HasPrefix(full, "system.posix_acl_"):
			// Expected: Debian ships ACLs (e.g. on var/log/journal); summarized by logDropped.
			b.aclDropped++
			if p := cleanName(hdr.Name); len(b.aclPaths) == 0 || b.aclPaths[len(b.aclPaths)-1] != p {
				b.aclPaths = append(b.aclPaths, p)
			}
		default:
			// squashfs can only store user., trusted. and security.
			b.cfg.log.Warn("squashfs: dropping unsupported xattr", "path", hdr.Name, "xattr", full)
		}
	}
	sortXattrs(ino.xattrs)
}

// maxLoggedPaths bounds the paths the INFO summary of dropped ACLs names.
const maxLoggedPaths = 20

// logDropped summarizes the posix ACL xattrs squashfs cannot store in one INFO line (the
// complete list of paths at debug level when it is longer than maxLoggedPaths).
func (b *builder) logDropped() {
	if b.aclDropped == 0 {
		return
	}
	paths := strings.Join(b.aclPaths[:min(len(b.aclPaths), maxLoggedPaths)], ",")
	if more := len(b.aclPaths) - maxLoggedPaths; more > 0 {
		paths += fmt.Sprintf(",… (%d more at debug level)", more)
		b.cfg.log.Debug("squashfs: dropped posix ACL xattrs: all paths", "paths", strings.Join(b.aclPaths, ","))
	}
	b.cfg.log.Info("squashfs: dropped posix ACL xattrs (squashfs cannot store system.* xattrs; expected for a Debian rootfs)",
		"count", b.aclDropped, "files", len(b.aclPaths), "paths", paths)
}
