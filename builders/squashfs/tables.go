package squashfs

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

var le = binary.LittleEndian

func sortXattrs(xs []xattr) {
	slices.SortFunc(xs, func(a, b xattr) int {
		return cmp.Or(cmp.Compare(a.typ, b.typ), cmp.Compare(a.name, b.name))
	})
}

// tables serializes inodes, directories, ids and xattrs into metadata.
type tables struct {
	b       *builder
	inodes  *metaWriter
	dirs    *metaWriter
	count   uint32
	ids     []uint32
	idIndex map[uint32]uint16
	xkv     *metaWriter
	xids    []byte // xattr id entries, 16 bytes each
	xindex  map[string]uint32
	rec     []byte // scratch record
}

// number sorts every directory and assigns inode numbers the way mksquashfs
// does: entries in name order, each directory's subtree right after it, the
// root last. Matching it keeps directory listings byte-compatible.
func (t *tables) number(d *inode) {
	slices.SortFunc(d.kids, func(a, b dirent) int { return cmp.Compare(a.name, b.name) })
	for _, e := range d.kids {
		if e.ino.num == 0 {
			t.count++
			e.ino.num = t.count
		}
		if e.ino.typ == typeDir {
			t.number(e.ino)
		}
	}
	if d == t.b.root {
		t.count++
		d.num = t.count
	}
}

func (t *tables) id(v uint32) (uint16, error) {
	if i, ok := t.idIndex[v]; ok {
		return i, nil
	}
	if len(t.ids) > math.MaxUint16 {
		return 0, fmt.Errorf("squashfs: more than 65536 distinct uids/gids")
	}
	i := uint16(len(t.ids))
	t.ids = append(t.ids, v)
	t.idIndex[v] = i
	return i, nil
}

func (t *tables) xattrID(xs []xattr) uint32 {
	if len(xs) == 0 {
		return noXattr
	}
	var kv []byte
	for _, x := range xs {
		kv = le.AppendUint16(kv, x.typ)
		kv = le.AppendUint16(kv, uint16(len(x.name)))
		kv = append(kv, x.name...)
		kv = le.AppendUint32(kv, uint32(len(x.value)))
		kv = append(kv, x.value...)
	}
	if i, ok := t.xindex[string(kv)]; ok {
		return i
	}
	i := uint32(len(t.xids) / 16)
	t.xids = le.AppendUint64(t.xids, t.xkv.ref())
	t.xids = le.AppendUint32(t.xids, uint32(len(xs)))
	t.xids = le.AppendUint32(t.xids, uint32(len(kv)))
	t.xkv.write(kv)
	t.xindex[string(kv)] = i
	return i
}

// header starts an inode record with the common header.
func (t *tables) header(ino *inode, typ uint16) ([]byte, error) {
	uid, err := t.id(ino.uid)
	if err != nil {
		return nil, err
	}
	gid, err := t.id(ino.gid)
	if err != nil {
		return nil, err
	}
	r := t.rec[:0]
	r = le.AppendUint16(r, typ)
	r = le.AppendUint16(r, ino.mode)
	r = le.AppendUint16(r, uid)
	r = le.AppendUint16(r, gid)
	r = le.AppendUint32(r, ino.mtime)
	return le.AppendUint32(r, ino.num), nil
}

func (t *tables) writeInode(ino *inode) error {
	xid := t.xattrID(ino.xattrs)
	ext := xid != noXattr
	typ := ino.typ
	var r []byte
	var err error
	switch ino.typ {
	case typeFile:
		fd := ino.file.resolve()
		ext = ext || ino.nlink > 1 || fd.sparse > 0 || fd.start > math.MaxUint32 || fd.size > math.MaxUint32
		if ext {
			if r, err = t.header(ino, typ+7); err != nil {
				return err
			}
			r = le.AppendUint64(r, fd.start)
			r = le.AppendUint64(r, uint64(fd.size))
			r = le.AppendUint64(r, fd.sparse)
			r = le.AppendUint32(r, ino.nlink)
			r = le.AppendUint32(r, fd.frag)
			r = le.AppendUint32(r, fd.fragOff)
			r = le.AppendUint32(r, xid)
		} else {
			if r, err = t.header(ino, typ); err != nil {
				return err
			}
			r = le.AppendUint32(r, uint32(fd.start))
			r = le.AppendUint32(r, fd.frag)
			r = le.AppendUint32(r, fd.fragOff)
			r = le.AppendUint32(r, uint32(fd.size))
		}
		for _, s := range fd.sizes {
			r = le.AppendUint32(r, s)
		}
	case typeSymlink:
		if ext {
			typ += 7
		}
		if r, err = t.header(ino, typ); err != nil {
			return err
		}
		r = le.AppendUint32(r, ino.nlink)
		r = le.AppendUint32(r, uint32(len(ino.target)))
		r = append(r, ino.target...)
	case typeBlock, typeChar:
		if ext {
			typ += 7
		}
		if r, err = t.header(ino, typ); err != nil {
			return err
		}
		r = le.AppendUint32(r, ino.nlink)
		r = le.AppendUint32(r, ino.rdev)
	case typeFifo, typeSocket:
		if ext {
			typ += 7
		}
		if r, err = t.header(ino, typ); err != nil {
			return err
		}
		r = le.AppendUint32(r, ino.nlink)
	default:
		return fmt.Errorf("squashfs: internal error: inode type %d", ino.typ)
	}
	if ext && ino.typ != typeFile {
		r = le.AppendUint32(r, xid)
	}
	ino.ref = t.inodes.ref()
	ino.written = true
	t.inodes.write(r)
	t.rec = r
	return nil
}

type dirIndex struct {
	index uint32 // offset of a header in the listing
	start uint32 // directory table block holding it
	name  string // first entry after the header
}

// writeDir writes d's subtree post-order: child inodes, the listing, then d.
func (t *tables) writeDir(ctx context.Context, d *inode, parent uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	subdirs := uint32(0)
	for _, e := range d.kids {
		switch {
		case e.ino.typ == typeDir:
			subdirs++
			if err := t.writeDir(ctx, e.ino, d.num); err != nil {
				return err
			}
		case !e.ino.written:
			if err := t.writeInode(e.ino); err != nil {
				return err
			}
		}
	}
	d.nlink = 2 + subdirs

	// The listing: runs of at most 256 entries behind a header naming the
	// inode metadata block and a base inode number. A new run (and an index
	// entry) also starts whenever the listing crosses 8 KiB since the last
	// index point, so lookups in big directories skip straight to a block.
	listStart := t.dirs.pos()
	listRef := t.dirs.ref()
	var (
		list      []byte
		idx       []dirIndex
		hdrAt     = -1
		count     int
		hdrBlock  uint32
		hdrNum    uint32
		lastIndex int
	)
	for _, e := range d.kids {
		blk, off := uint32(e.ino.ref>>16), uint16(e.ino.ref)
		size := 8 + len(e.name)
		delta := int64(e.ino.num) - int64(hdrNum)
		crossing := hdrAt >= 0 && len(list)+size-lastIndex > metaSize
		if hdrAt < 0 || count == 256 || blk != hdrBlock || delta > math.MaxInt16 || delta < math.MinInt16 || crossing {
			if hdrAt >= 0 {
				le.PutUint32(list[hdrAt:], uint32(count-1))
			}
			if crossing {
				idx = append(idx, dirIndex{index: uint32(len(list)), name: e.name})
				lastIndex = len(list)
			}
			hdrAt, count, hdrBlock, hdrNum = len(list), 0, blk, e.ino.num
			list = le.AppendUint32(list, 0)
			list = le.AppendUint32(list, blk)
			list = le.AppendUint32(list, hdrNum)
			delta = 0
		}
		list = le.AppendUint16(list, off)
		list = le.AppendUint16(list, uint16(int16(delta)))
		list = le.AppendUint16(list, e.ino.typ)
		list = le.AppendUint16(list, uint16(len(e.name)-1))
		list = append(list, e.name...)
		count++
	}
	if hdrAt >= 0 {
		le.PutUint32(list[hdrAt:], uint32(count-1))
	}
	t.dirs.write(list)
	for i := range idx {
		idx[i].start = uint32(t.dirs.blockStart(listStart + uint64(idx[i].index)))
	}

	xid := t.xattrID(d.xattrs)
	fileSize := uint64(len(list)) + 3
	block, offset := uint32(listRef>>16), uint16(listRef)
	var r []byte
	var err error
	// mksquashfs uses the extended type for any directory of more than 256
	// entries or 8 KiB of entries, whether or not it got an index.
	entryBytes := 0
	for _, e := range d.kids {
		entryBytes += 8 + len(e.name)
	}
	if len(d.kids) < 257 && entryBytes < metaSize && xid == noXattr {
		if r, err = t.header(d, typeDir); err != nil {
			return err
		}
		r = le.AppendUint32(r, block)
		r = le.AppendUint32(r, d.nlink)
		r = le.AppendUint16(r, uint16(fileSize))
		r = le.AppendUint16(r, offset)
		r = le.AppendUint32(r, parent)
	} else {
		if fileSize > math.MaxUint32 || len(idx) > math.MaxUint16 {
			return fmt.Errorf("squashfs: directory listing too large (%d bytes)", fileSize)
		}
		if r, err = t.header(d, typeDir+7); err != nil {
			return err
		}
		r = le.AppendUint32(r, d.nlink)
		r = le.AppendUint32(r, uint32(fileSize))
		r = le.AppendUint32(r, block)
		r = le.AppendUint32(r, parent)
		r = le.AppendUint16(r, uint16(len(idx)))
		r = le.AppendUint16(r, offset)
		r = le.AppendUint32(r, xid)
		for _, x := range idx {
			r = le.AppendUint32(r, x.index)
			r = le.AppendUint32(r, x.start)
			r = le.AppendUint32(r, uint32(len(x.name)-1))
			r = append(r, x.name...)
		}
	}
	d.ref = t.inodes.ref()
	d.written = true
	t.inodes.write(r)
	t.rec = r
	return nil
}

// lookupTable stores fixed-size records as metadata blocks followed by the
// uncompressed list of their absolute positions; it returns the blob and the
// offset of that list within it.
func lookupTable(c codec, records []byte, at uint64) ([]byte, uint64, error) {
	m := newMetaWriter(c)
	m.write(records)
	m.flush()
	if m.err != nil {
		return nil, 0, m.err
	}
	out := m.out
	indexAt := uint64(len(out))
	for _, s := range m.starts {
		out = le.AppendUint64(out, at+s)
	}
	return out, indexAt, nil
}

// writeTables writes the metadata after the data area, then the superblock.
func (b *builder) writeTables(ctx context.Context) (Result, error) {
	newCodec := func() (codec, error) { return b.cfg.comp.newCodec(b.cfg.level, b.cfg.blockSize) }
	c, err := newCodec()
	if err != nil {
		return Result{}, fmt.Errorf("squashfs: %w", err)
	}
	t := &tables{
		b:       b,
		inodes:  newMetaWriter(c),
		dirs:    newMetaWriter(c),
		xkv:     newMetaWriter(c),
		idIndex: map[uint32]uint16{},
		xindex:  map[string]uint32{},
	}
	t.number(b.root)
	if int(t.count) != b.inodes {
		return Result{}, fmt.Errorf("squashfs: internal error: numbered %d inodes, have %d", t.count, b.inodes)
	}
	if err := t.writeDir(ctx, b.root, t.count+1); err != nil {
		return Result{}, err
	}
	rootRef := b.root.ref
	for _, m := range []*metaWriter{t.inodes, t.dirs, t.xkv} {
		m.flush()
		if m.err != nil {
			return Result{}, fmt.Errorf("squashfs: compressing metadata: %w", m.err)
		}
	}

	off := b.dataEnd
	put := func(p []byte) error {
		if _, err := b.dst.WriteAt(p, int64(off)); err != nil {
			return fmt.Errorf("squashfs: writing tables: %w", err)
		}
		off += uint64(len(p))
		return nil
	}
	inodeStart := off
	if err := put(t.inodes.out); err != nil {
		return Result{}, err
	}
	dirStart := off
	if err := put(t.dirs.out); err != nil {
		return Result{}, err
	}

	var frags []byte
	for _, f := range b.pipe.frags {
		frags = le.AppendUint64(frags, f.start)
		frags = le.AppendUint32(frags, f.size)
		frags = le.AppendUint32(frags, 0)
	}
	blob, idx, err := lookupTable(c, frags, off)
	if err != nil {
		return Result{}, fmt.Errorf("squashfs: fragment table: %w", err)
	}
	fragStart := off + idx
	if err := put(blob); err != nil {
		return Result{}, err
	}

	var ids []byte
	for _, id := range t.ids {
		ids = le.AppendUint32(ids, id)
	}
	blob, idx, err = lookupTable(c, ids, off)
	if err != nil {
		return Result{}, fmt.Errorf("squashfs: id table: %w", err)
	}
	idStart := off + idx
	if err := put(blob); err != nil {
		return Result{}, err
	}

	xattrStart := uint64(math.MaxUint64)
	if len(t.xids) > 0 {
		kvStart := off
		if err := put(t.xkv.out); err != nil {
			return Result{}, err
		}
		blob, idx, err = lookupTable(c, t.xids, off)
		if err != nil {
			return Result{}, fmt.Errorf("squashfs: xattr table: %w", err)
		}
		// The header sits between the id blocks and their position list.
		hdr := le.AppendUint64(nil, kvStart)
		hdr = le.AppendUint32(hdr, uint32(len(t.xids)/16))
		hdr = le.AppendUint32(hdr, 0)
		blob = slices.Concat(blob[:idx], hdr, blob[idx:])
		xattrStart = off + idx
		if err := put(blob); err != nil {
			return Result{}, err
		}
	}
	bytesUsed := off
	if pad := (devBlockSize - off%devBlockSize) % devBlockSize; pad > 0 {
		if err := put(make([]byte, pad)); err != nil {
			return Result{}, err
		}
	}

	flags := uint16(0x0040) // duplicates removed
	if len(t.xids) == 0 {
		flags |= 0x0200
	}
	opt := b.cfg.comp.options(b.cfg.level, b.cfg.blockSize)
	if opt != nil {
		flags |= 0x0400
	}
	sb := make([]byte, 0, b.start)
	sb = le.AppendUint32(sb, 0x73717368)
	sb = le.AppendUint32(sb, t.count)
	sb = le.AppendUint32(sb, b.cfg.mtime)
	sb = le.AppendUint32(sb, uint32(b.cfg.blockSize))
	sb = le.AppendUint32(sb, uint32(len(b.pipe.frags)))
	sb = le.AppendUint16(sb, b.cfg.comp.id)
	sb = le.AppendUint16(sb, uint16(b.cfg.blockLog))
	sb = le.AppendUint16(sb, flags)
	sb = le.AppendUint16(sb, uint16(len(t.ids)))
	sb = le.AppendUint16(sb, 4)
	sb = le.AppendUint16(sb, 0)
	sb = le.AppendUint64(sb, rootRef)
	sb = le.AppendUint64(sb, bytesUsed)
	sb = le.AppendUint64(sb, idStart)
	sb = le.AppendUint64(sb, xattrStart)
	sb = le.AppendUint64(sb, inodeStart)
	sb = le.AppendUint64(sb, dirStart)
	sb = le.AppendUint64(sb, fragStart)
	sb = le.AppendUint64(sb, math.MaxUint64) // no export table
	if opt != nil {
		sb = le.AppendUint16(sb, uint16(len(opt))|0x8000)
		sb = append(sb, opt...)
	}
	if _, err := b.dst.WriteAt(sb, 0); err != nil {
		return Result{}, fmt.Errorf("squashfs: writing superblock: %w", err)
	}
	return Result{
		Size:             int64(off),
		Inodes:           int(t.count),
		Fragments:        len(b.pipe.frags),
		DuplicateFiles:   b.dups + b.pipe.dups,
		CachedBlocks:     int(b.pipe.cached.Load()),
		CompressedBlocks: int(b.pipe.compressed.Load()),
	}, nil
}
