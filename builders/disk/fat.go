package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
)

// This file is a small FAT32 writer of our own: it lays out a whole file system from a list of
// files known in advance (sizes included), contiguously and in a fixed order, and writes only
// the bytes that are not zero. Nothing in it reads a clock or a random source.

const (
	fatMinReserved   = 32 // boot sector 0, FSInfo 1, backups 6 and 7
	fatDataAlign     = 8  // sectors: the data area starts on a 4 KiB boundary
	fatBackupBoot    = 6
	fatMinClusters   = 65525 // fewer clusters and every reader calls the volume FAT16
	fatMaxClusters   = 0x0ffffff5 - 2
	fatEOC           = 0x0fffffff
	fatMaxFileSize   = 1<<32 - 1
	dirEntrySize     = 32
	maxDirEntries    = 65536
	lfnCharsPerEntry = 13

	attrDir      = 0x10
	attrArchive  = 0x20
	attrVolumeID = 0x08
	attrLFN      = 0x0f
)

// fatGeometry is the shape of a FAT32 file system of a given size.
type fatGeometry struct {
	totalSectors uint32
	reserved     uint32 // sectors before the first FAT
	secPerClus   uint32
	fatSectors   uint32
	clusters     uint32 // data clusters, numbered 2..clusters+1
}

func (g fatGeometry) clusterBytes() int64 { return int64(g.secPerClus) * sectorSize }

func (g fatGeometry) fatOffset(n int) int64 {
	return int64(g.reserved+uint32(n)*g.fatSectors) * sectorSize
}

func (g fatGeometry) clusterOffset(c uint32) int64 {
	return g.fatOffset(2) + int64(c-2)*g.clusterBytes()
}

// newFATGeometry picks the cluster size of Microsoft's table (the one mkfs.fat uses), the
// smallest FAT that maps every data cluster, and pads the reserved sectors so that the data
// area (hence every cluster of 4 KiB or more) is 4 KiB aligned.
func newFATGeometry(size int64) (fatGeometry, error) {
	var g fatGeometry
	if size <= 0 || size%sectorSize != 0 || size/sectorSize > 0xffffffff {
		return g, fmt.Errorf("FAT32 size %d must be a positive multiple of %d below 2 TiB", size, sectorSize)
	}
	switch {
	case size <= 260*MiB:
		g.secPerClus = 1
	case size <= 8*GiB:
		g.secPerClus = 8
	case size <= 16*GiB:
		g.secPerClus = 16
	case size <= 32*GiB:
		g.secPerClus = 32
	default:
		g.secPerClus = 64
	}
	g.totalSectors = uint32(size / sectorSize)
	g.reserved = fatMinReserved
	for range 8 { // the padding changes the FAT size by at most a sector: this settles fast
		if g.totalSectors <= g.reserved+2 {
			return g, fmt.Errorf("FAT32 size %d is too small", size)
		}
		g.fatSectors, g.clusters = fatSize(g.totalSectors-g.reserved, g.secPerClus)
		pad := (fatDataAlign - (g.reserved+2*g.fatSectors)%fatDataAlign) % fatDataAlign
		if pad == 0 {
			break
		}
		g.reserved += pad
	}
	if (g.reserved+2*g.fatSectors)%fatDataAlign != 0 {
		return g, fmt.Errorf("FAT32 size %d: cannot align the data area", size)
	}
	if g.clusters < fatMinClusters {
		return g, fmt.Errorf("%d clusters of %d bytes: FAT32 needs at least %d", g.clusters, g.clusterBytes(), fatMinClusters)
	}
	if g.clusters > fatMaxClusters {
		return g, fmt.Errorf("%d clusters: FAT32 allows at most %d", g.clusters, fatMaxClusters)
	}
	return g, nil
}

// fatSize returns the smallest number of FAT sectors that maps every cluster of the avail
// sectors left after the reserved ones, and the number of data clusters.
func fatSize(avail, secPerClus uint32) (fat, clusters uint32) {
	const entriesPerSector = sectorSize / 4
	clustersFor := func(fat uint32) uint32 {
		if 2*fat >= avail {
			return 0
		}
		return (avail - 2*fat) / secPerClus
	}
	// An upper bound that always maps every cluster, then shrink while it still does.
	fat = (avail/secPerClus + 2 + entriesPerSector - 1) / entriesPerSector
	for fat > 1 && clustersFor(fat-1)+2 <= (fat-1)*entriesPerSector {
		fat--
	}
	return fat, clustersFor(fat)
}

// fatMinSize is the smallest whole number of MiB that holds a FAT32 file system.
func fatMinSize() int64 {
	for n := int64(1); ; n++ {
		if _, err := newFATGeometry(n * MiB); err == nil {
			return n * MiB
		}
	}
}

// fatNode is a file or directory of the image.
type fatNode struct {
	name     string // long name as given
	short    [11]byte
	lfn      []uint16 // UTF-16 long name; nil when the short name says it all
	dir      bool
	parent   *fatNode
	children []*fatNode
	byKey    map[string]*fatNode // case-folded child names (FAT compares names case-insensitively)
	file     File
	size     int64 // bytes: file content, or directory entries
	cluster  uint32
	nclust   uint32
}

// fatImage is a planned FAT32 file system: geometry, tree and cluster allocation.
type fatImage struct {
	g      fatGeometry
	root   *fatNode
	dirs   []*fatNode // allocation order, root first
	files  []*fatNode // allocation order
	used   uint32     // allocated clusters
	volID  uint32
	label  [11]byte
	hidden uint32 // sectors before the file system on the disk (BPB "hidden sectors")
	date   uint16
	time   uint16
	tenth  uint8
}

type fatOptions struct {
	volumeID uint32
	label    string
	mtime    time.Time
	hidden   uint32
}

// planFAT validates files and lays them out in a FAT32 file system of size bytes. It fails
// before anything is written when the content does not fit.
func planFAT(size int64, files []File, o fatOptions) (*fatImage, error) {
	g, err := newFATGeometry(size)
	if err != nil {
		return nil, err
	}
	fi := &fatImage{g: g, volID: o.volumeID, hidden: o.hidden}
	fi.date, fi.time, fi.tenth = dosTime(o.mtime)
	copy(fi.label[:], "           ")
	copy(fi.label[:], strings.ToUpper(o.label))
	fi.root = &fatNode{dir: true, byKey: map[string]*fatNode{}}

	for _, f := range files {
		if err := fi.add(f); err != nil {
			return nil, err
		}
	}

	// Short names and entry counts, children in byte order of their names.
	var prepare func(d *fatNode) error
	prepare = func(d *fatNode) error {
		slices.SortFunc(d.children, func(a, b *fatNode) int { return strings.Compare(a.name, b.name) })
		used := map[[11]byte]bool{}
		entries := 1 // volume label in the root, "." and ".." elsewhere
		if d.parent != nil {
			entries = 2
		}
		for _, c := range d.children {
			c.short, c.lfn = shortName(c.name, used)
			used[c.short] = true
			entries += 1 + (len(c.lfn)+lfnCharsPerEntry-1)/lfnCharsPerEntry
			if c.dir {
				if err := prepare(c); err != nil {
					return err
				}
			}
		}
		if entries > maxDirEntries {
			return fmt.Errorf("ESP directory %q has %d entries: FAT allows %d", d.path(), entries, maxDirEntries)
		}
		d.size = int64(entries) * dirEntrySize
		return nil
	}
	if err := prepare(fi.root); err != nil {
		return nil, err
	}

	// Allocation: directories first (root at cluster 2), then files, both in pre-order.
	var walk func(d *fatNode)
	walk = func(d *fatNode) {
		fi.dirs = append(fi.dirs, d)
		for _, c := range d.children {
			if c.dir {
				walk(c)
			}
		}
	}
	walk(fi.root)
	var walkFiles func(d *fatNode)
	walkFiles = func(d *fatNode) {
		for _, c := range d.children {
			if c.dir {
				walkFiles(c)
			} else {
				fi.files = append(fi.files, c)
			}
		}
	}
	walkFiles(fi.root)

	cb := g.clusterBytes()
	var need int64
	for _, n := range append(slices.Clone(fi.dirs), fi.files...) {
		need += (n.size + cb - 1) / cb
	}
	if need > int64(g.clusters) {
		return nil, fmt.Errorf("ESP content needs %s but the %s ESP holds %s: raise --esp-size",
			sizeString(need*cb), sizeString(size), sizeString(int64(g.clusters)*cb))
	}
	next := uint32(2)
	for _, n := range append(slices.Clone(fi.dirs), fi.files...) {
		n.nclust = uint32((n.size + cb - 1) / cb)
		if n.nclust > 0 {
			n.cluster = next
			next += n.nclust
		}
	}
	fi.used = next - 2
	return fi, nil
}

func (n *fatNode) path() string {
	if n.parent == nil {
		return "/"
	}
	if n.parent.parent == nil {
		return n.name
	}
	return n.parent.path() + "/" + n.name
}

// add places one file in the tree, creating its directories.
func (fi *fatImage) add(f File) error {
	if f.Size < 0 || f.Size > fatMaxFileSize {
		return fmt.Errorf("ESP file %q: size %d outside 0..%d", f.Path, f.Size, int64(fatMaxFileSize))
	}
	if f.Open == nil {
		return fmt.Errorf("ESP file %q: no Open function", f.Path)
	}
	parts := strings.Split(f.Path, "/")
	d := fi.root
	for i, name := range parts {
		if err := checkLongName(name); err != nil {
			return fmt.Errorf("ESP file %q: %w", f.Path, err)
		}
		key := strings.ToLower(name)
		c := d.byKey[key]
		last := i == len(parts)-1
		switch {
		case c == nil:
			c = &fatNode{name: name, parent: d, dir: !last}
			if last {
				c.file, c.size = f, f.Size
			} else {
				c.byKey = map[string]*fatNode{}
			}
			d.byKey[key] = c
			d.children = append(d.children, c)
		case last || !c.dir:
			return fmt.Errorf("ESP file %q: %q already exists (FAT names ignore case)", f.Path, c.path())
		case c.name != name:
			return fmt.Errorf("ESP file %q: directory %q is also spelled %q (FAT names ignore case)", f.Path, c.path(), name)
		}
		d = c
	}
	return nil
}

func checkLongName(name string) error {
	switch {
	case name == "":
		return errors.New("empty path component (paths are relative, '/'-separated)")
	case name == "." || name == "..":
		return fmt.Errorf("path component %q", name)
	case strings.HasSuffix(name, ".") || strings.HasSuffix(name, " "):
		return fmt.Errorf("name %q ends in a dot or a space, which FAT drops", name)
	case len(utf16.Encode([]rune(name))) > 255:
		return fmt.Errorf("name %q is longer than 255 UTF-16 code units", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("name %q contains %q, which FAT does not allow", name, r)
		}
	}
	return nil
}

// isShortChar reports whether c may appear in an 8.3 name (upper case ASCII only).
func isShortChar(c rune) bool {
	return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("$%'-_@~`!(){}^#&", c)
}

// shortName returns the 8.3 entry name of a long name, unique among used, and the UTF-16 long
// name to store with it (nil when the 8.3 name spells the name exactly). Names that are a valid
// 8.3 name once upper-cased keep it, with a long entry for the case (Linux's shortname=mixed
// does the same); other names get Microsoft's basis name with a "~N" tail.
func shortName(name string, used map[[11]byte]bool) ([11]byte, []uint16) {
	var sn [11]byte
	pad := func(base, ext string) [11]byte {
		var s [11]byte
		copy(s[:], "           ")
		copy(s[0:8], base)
		copy(s[8:11], ext)
		return s
	}
	upper := strings.ToUpper(name)
	base, ext, hasDot := strings.Cut(upper, ".")
	valid := len(base) >= 1 && len(base) <= 8 && len(ext) <= 3 && (!hasDot || len(ext) > 0) && !strings.Contains(ext, ".")
	for _, c := range base + ext {
		valid = valid && isShortChar(c)
	}
	if valid {
		sn = pad(base, ext)
		if !used[sn] {
			if upper == name {
				return sn, nil
			}
			return sn, utf16.Encode([]rune(name))
		}
	}

	// Basis name: leading dots go, the last dot splits base and extension, spaces and other
	// dots drop, characters an 8.3 name cannot hold become '_'.
	trimmed := strings.TrimLeft(upper, ".")
	b, e := trimmed, ""
	if i := strings.LastIndexByte(trimmed, '.'); i >= 0 {
		b, e = trimmed[:i], trimmed[i+1:]
	}
	conv := func(s string, max int) string {
		var sb strings.Builder
		for _, c := range s {
			switch {
			case c == ' ' || c == '.':
				continue
			case isShortChar(c):
				sb.WriteRune(c)
			default:
				sb.WriteByte('_')
			}
			if sb.Len() == max {
				break
			}
		}
		return sb.String()
	}
	b, e = conv(b, 8), conv(e, 3)
	if b == "" {
		b = "_"
	}
	for n := 1; ; n++ {
		tail := "~" + strconv.Itoa(n)
		sn = pad(b[:min(len(b), 8-len(tail))]+tail, e)
		if !used[sn] {
			return sn, utf16.Encode([]rune(name))
		}
	}
}

func lfnChecksum(sn [11]byte) uint8 {
	var sum uint8
	for _, c := range sn {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

// dosTime converts t (UTC) to FAT's date, 2-second time and creation tenths, clamped to the
// years FAT can express (1980..2107). The zero time becomes 1980-01-01 00:00:00.
func dosTime(t time.Time) (date, tm uint16, tenth uint8) {
	t = t.UTC()
	switch {
	case t.Year() < 1980:
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	case t.Year() > 2107:
		t = time.Date(2107, 12, 31, 23, 59, 59, 0, time.UTC)
	}
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	tenth = uint8(t.Second()%2*100 + t.Nanosecond()/10_000_000)
	return date, tm, tenth
}

func (fi *fatImage) putEntry(e []byte, name [11]byte, attr uint8, cluster uint32, size uint32) {
	copy(e[0:11], name[:])
	e[11] = attr
	e[13] = fi.tenth
	binary.LittleEndian.PutUint16(e[14:16], fi.time)
	binary.LittleEndian.PutUint16(e[16:18], fi.date)
	binary.LittleEndian.PutUint16(e[18:20], fi.date)
	binary.LittleEndian.PutUint16(e[20:22], uint16(cluster>>16))
	binary.LittleEndian.PutUint16(e[22:24], fi.time)
	binary.LittleEndian.PutUint16(e[24:26], fi.date)
	binary.LittleEndian.PutUint16(e[26:28], uint16(cluster))
	binary.LittleEndian.PutUint32(e[28:32], size)
}

// dirBytes encodes a directory's entries, padded with zeros to its clusters.
func (fi *fatImage) dirBytes(d *fatNode) []byte {
	b := make([]byte, int64(d.nclust)*fi.g.clusterBytes())
	off := 0
	next := func() []byte { e := b[off : off+dirEntrySize]; off += dirEntrySize; return e }
	if d.parent == nil {
		fi.putEntry(next(), fi.label, attrVolumeID, 0, 0)
	} else {
		fi.putEntry(next(), [11]byte{'.', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '}, attrDir, d.cluster, 0)
		up := d.parent.cluster
		if d.parent.parent == nil {
			up = 0 // ".." of a root child is cluster 0, even on FAT32 where the root has a cluster
		}
		fi.putEntry(next(), [11]byte{'.', '.', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '}, attrDir, up, 0)
	}
	for _, c := range d.children {
		if c.lfn != nil {
			sum := lfnChecksum(c.short)
			slots := (len(c.lfn) + lfnCharsPerEntry - 1) / lfnCharsPerEntry
			for s := slots; s >= 1; s-- {
				e := next()
				e[0] = uint8(s)
				if s == slots {
					e[0] |= 0x40
				}
				e[11] = attrLFN
				e[13] = sum
				for i := range lfnCharsPerEntry {
					k := (s-1)*lfnCharsPerEntry + i
					var ch uint16
					switch {
					case k < len(c.lfn):
						ch = c.lfn[k]
					case k == len(c.lfn):
						ch = 0x0000
					default:
						ch = 0xffff
					}
					var at int
					switch {
					case i < 5:
						at = 1 + 2*i
					case i < 11:
						at = 14 + 2*(i-5)
					default:
						at = 28 + 2*(i-11)
					}
					binary.LittleEndian.PutUint16(e[at:], ch)
				}
			}
		}
		if c.dir {
			fi.putEntry(next(), c.short, attrDir, c.cluster, 0)
		} else {
			fi.putEntry(next(), c.short, attrArchive, c.cluster, uint32(c.size))
		}
	}
	return b
}

func (fi *fatImage) bootSector() []byte {
	g := fi.g
	b := make([]byte, sectorSize)
	copy(b[0:3], []byte{0xeb, 0x58, 0x90})
	copy(b[3:11], "IMGCTL  ")
	binary.LittleEndian.PutUint16(b[11:13], sectorSize)
	b[13] = uint8(g.secPerClus)
	binary.LittleEndian.PutUint16(b[14:16], uint16(g.reserved))
	b[16] = 2                                   // FATs
	b[21] = 0xf8                                // fixed disk
	binary.LittleEndian.PutUint16(b[24:26], 32) // sectors per track
	binary.LittleEndian.PutUint16(b[26:28], 64) // heads
	binary.LittleEndian.PutUint32(b[28:32], fi.hidden)
	binary.LittleEndian.PutUint32(b[32:36], g.totalSectors)
	binary.LittleEndian.PutUint32(b[36:40], g.fatSectors)
	binary.LittleEndian.PutUint32(b[44:48], 2) // root directory cluster
	binary.LittleEndian.PutUint16(b[48:50], 1) // FSInfo sector
	binary.LittleEndian.PutUint16(b[50:52], fatBackupBoot)
	b[64] = 0x80 // drive number
	b[66] = 0x29 // extended boot signature
	binary.LittleEndian.PutUint32(b[67:71], fi.volID)
	copy(b[71:82], fi.label[:])
	copy(b[82:90], "FAT32   ")
	// Boot code for a BIOS that tries this volume anyway: int 18h (boot failed, try the next
	// device), then halt forever.
	copy(b[90:], []byte{0xcd, 0x18, 0xf4, 0xeb, 0xfd})
	b[510], b[511] = 0x55, 0xaa
	return b
}

func (fi *fatImage) fsInfo() []byte {
	b := make([]byte, sectorSize)
	binary.LittleEndian.PutUint32(b[0:4], 0x41615252)
	binary.LittleEndian.PutUint32(b[484:488], 0x61417272)
	binary.LittleEndian.PutUint32(b[488:492], fi.g.clusters-fi.used)
	nextFree := uint32(0xffffffff)
	if fi.used < fi.g.clusters {
		nextFree = 2 + fi.used
	}
	binary.LittleEndian.PutUint32(b[492:496], nextFree)
	binary.LittleEndian.PutUint32(b[508:512], 0xaa550000)
	return b
}

func (fi *fatImage) fatBytes() []byte {
	b := make([]byte, int64(fi.g.fatSectors)*sectorSize)
	binary.LittleEndian.PutUint32(b[0:4], 0x0ffffff8)
	binary.LittleEndian.PutUint32(b[4:8], fatEOC) // clean, no I/O errors
	for _, n := range append(slices.Clone(fi.dirs), fi.files...) {
		for i := range n.nclust {
			c := n.cluster + i
			v := c + 1
			if i == n.nclust-1 {
				v = fatEOC
			}
			binary.LittleEndian.PutUint32(b[4*c:], v)
		}
	}
	return b
}

// write puts the file system at base in w, whose region must read as zeros: only non-zero
// sectors are written. File contents are streamed from their Open functions.
func (fi *fatImage) write(ctx context.Context, w io.WriterAt, base int64) error {
	boot, info := fi.bootSector(), fi.fsInfo()
	for _, r := range []gptRegion{
		{0, boot}, {sectorSize, info},
		{fatBackupBoot * sectorSize, boot}, {(fatBackupBoot + 1) * sectorSize, info},
	} {
		if err := writeNonZero(w, r.data, base+r.off); err != nil {
			return fmt.Errorf("write FAT boot sectors: %w", err)
		}
	}
	fat := fi.fatBytes()
	for n := range 2 {
		if err := writeNonZero(w, fat, base+fi.g.fatOffset(n)); err != nil {
			return fmt.Errorf("write FAT: %w", err)
		}
	}
	for _, d := range fi.dirs {
		if err := writeNonZero(w, fi.dirBytes(d), base+fi.g.clusterOffset(d.cluster)); err != nil {
			return fmt.Errorf("write ESP directory %s: %w", d.path(), err)
		}
	}
	buf := make([]byte, copyChunk)
	for _, f := range fi.files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if f.size == 0 {
			continue
		}
		if err := fi.writeFile(ctx, w, base+fi.g.clusterOffset(f.cluster), f, buf); err != nil {
			return fmt.Errorf("write ESP file %s: %w", f.path(), err)
		}
	}
	return nil
}

func (fi *fatImage) writeFile(ctx context.Context, w io.WriterAt, off int64, f *fatNode, buf []byte) (err error) {
	rc, err := f.file.Open()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := rc.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := copySparse(ctx, w, off, rc, f.size, buf); err != nil {
		return err
	}
	var one [1]byte
	if m, _ := io.ReadFull(rc, one[:]); m > 0 {
		return fmt.Errorf("content is longer than its declared %d bytes", f.size)
	}
	return nil
}

// errShort reports a reader that ended before its declared size.
var errShort = errors.New("content is shorter than its declared size")

// copySparse copies exactly n bytes from r to w at off, skipping zero sectors, and checks ctx
// between chunks.
func copySparse(ctx context.Context, w io.WriterAt, off int64, r io.Reader, n int64, buf []byte) (int64, error) {
	var done int64
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		chunk := buf[:min(int64(len(buf)), n-done)]
		m, err := io.ReadFull(r, chunk)
		if m > 0 {
			if werr := writeNonZero(w, chunk[:m], off+done); werr != nil {
				return done, werr
			}
			done += int64(m)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return done, fmt.Errorf("%w (%d of %d bytes)", errShort, done, n)
			}
			return done, err
		}
	}
	return done, nil
}

var zeroSector [sectorSize]byte

// writeNonZero writes b at off, leaving out the 512-byte sectors of b that are all zero (the
// destination reads as zeros there already, and stays a hole).
func writeNonZero(w io.WriterAt, b []byte, off int64) error {
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := w.WriteAt(b[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(b); i += sectorSize {
		end := min(i+sectorSize, len(b))
		if bytes.Equal(b[i:end], zeroSector[:end-i]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
	}
	return flush(len(b))
}
