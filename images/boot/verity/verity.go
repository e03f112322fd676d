// Package verity builds and checks dm-verity hash trees in the format veritysetup writes and
// the kernel's dm-verity target reads: format 1 ("normal"), sha256, 4096-byte data and hash
// blocks, the 512-byte superblock at the start of the hash area (padded with zeros to a block),
// then the tree, highest level first.
//
// The builder appends the hash area to the root squashfs (which is padded to a block), so the
// hash offset is the squashfs's size; the kernel command line carries the root hash and that
// offset (images/boot's KeyVerity, KeyVerityOffset). The salt is fixed (Salt): level-0 hashes of
// equal data blocks are equal in every image, which is what lets the node's update reuse the
// blocks of its running slot by hash. The superblock's UUID is derived from the root hash, so the
// same data always gives the same bytes.
//
// It is a leaf (standard library only), shared by the builder and the node agent.
package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// BlockSize is the data and hash block size.
const BlockSize = 4096

// HashSize is the size of a sha256 hash.
const HashSize = sha256.Size

// hashesPerBlock is the number of hashes in a hash block (format 1: no per-hash padding for
// sha256).
const hashesPerBlock = BlockSize / HashSize

// hashesPerBlockBits is log2(hashesPerBlock).
const hashesPerBlockBits = 7

// Salt is the salt of every imgctl hash tree: sha256("imgctl dm-verity salt v1").
var Salt = func() []byte { s := sha256.Sum256([]byte("imgctl dm-verity salt v1")); return s[:] }()

// Algorithm is the hash algorithm's name in the superblock and the dm-verity table.
const Algorithm = "sha256"

// HashBlock is a block's hash in the tree (format 1): sha256(Salt || b).
func HashBlock(b []byte) [HashSize]byte {
	h := sha256.New()
	h.Write(Salt)
	h.Write(b)
	var sum [HashSize]byte
	h.Sum(sum[:0])
	return sum
}

// Tree is a built hash tree.
type Tree struct {
	DataBlocks uint64
	RootHash   [HashSize]byte
	// levels[0] are the data blocks' hashes, levels[i] the hashes of level i-1's hash blocks;
	// the last level fits in one hash block, whose hash is RootHash. Empty for one data block
	// (its hash is the root hash).
	levels [][][HashSize]byte
	leaves [][HashSize]byte
}

// levelCounts is the number of hash blocks of each level of a tree over dataBlocks blocks,
// level 0 first, as the kernel and veritysetup compute it: as many levels as it takes for the
// last one to fit in one block (none for a single data block).
func levelCounts(dataBlocks uint64) []uint64 {
	var levels int
	for levels*hashesPerBlockBits < 64 && (dataBlocks-1)>>(levels*hashesPerBlockBits) != 0 {
		levels++
	}
	counts := make([]uint64, levels)
	n := dataBlocks
	for i := range counts {
		n = (n + hashesPerBlock - 1) / hashesPerBlock
		counts[i] = n
	}
	return counts
}

// HashAreaSize is the size of the hash area of dataBlocks data blocks: the superblock's block
// and the tree's blocks. (Build refuses empty data; 0 blocks give the superblock's block.)
func HashAreaSize(dataBlocks uint64) int64 {
	size := int64(BlockSize)
	if dataBlocks == 0 {
		return size
	}
	for _, n := range levelCounts(dataBlocks) {
		size += int64(n) * BlockSize
	}
	return size
}

// HashStart is where the tree starts, in hash blocks from the device's start, when the hash area
// starts at offset (a multiple of BlockSize): the dm-verity table's hash_start.
func HashStart(offset int64) uint64 { return uint64(offset)/BlockSize + 1 }

// Build reads dataSize bytes (a positive multiple of BlockSize) from r and builds their tree.
func Build(ctx context.Context, r io.Reader, dataSize int64) (*Tree, error) {
	if dataSize <= 0 || dataSize%BlockSize != 0 {
		return nil, fmt.Errorf("verity: data size %d: want a positive multiple of %d", dataSize, BlockSize)
	}
	n := uint64(dataSize / BlockSize)
	leaves := make([][HashSize]byte, n)
	buf := make([]byte, BlockSize)
	h := sha256.New()
	for i := range leaves {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("verity: data ends in block %d of %d: %w", i, n, io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("verity: reading data block %d: %w", i, err)
		}
		h.Reset()
		h.Write(Salt)
		h.Write(buf)
		h.Sum(leaves[i][:0])
	}
	return newTree(leaves), nil
}

// newTree builds the levels above leaves.
func newTree(leaves [][HashSize]byte) *Tree {
	t := &Tree{DataBlocks: uint64(len(leaves)), leaves: leaves}
	if len(leaves) == 1 {
		t.RootHash = leaves[0]
		return t
	}
	below := leaves
	block := make([]byte, BlockSize)
	for range levelCounts(t.DataBlocks) {
		t.levels = append(t.levels, below)
		above := make([][HashSize]byte, (len(below)+hashesPerBlock-1)/hashesPerBlock)
		for i := range above {
			fillBlock(block, below, i)
			above[i] = HashBlock(block)
		}
		below = above
	}
	// below is the top block's hash.
	t.RootHash = below[0]
	return t
}

// fillBlock writes hash block i of a level's hashes into block, zero-padded.
func fillBlock(block []byte, hashes [][HashSize]byte, i int) {
	clear(block)
	end := min((i+1)*hashesPerBlock, len(hashes))
	for j, h := range hashes[i*hashesPerBlock : end] {
		copy(block[j*HashSize:], h[:])
	}
}

// Leaves are the data blocks' hashes (HashBlock of each), in order. The slice is the tree's:
// do not modify it.
func (t *Tree) Leaves() [][HashSize]byte { return t.leaves }

// RootHashHex is RootHash in lower-case hex (veritysetup's and the kernel command line's form).
func (t *Tree) RootHashHex() string { return hex.EncodeToString(t.RootHash[:]) }

// UUID is the superblock's UUID, derived from the root hash (RFC 9562 version 8).
func (t *Tree) UUID() [16]byte { return uuidOf(t.RootHash) }

// UUIDString is UUID in its text form (veritysetup's --uuid).
func (t *Tree) UUIDString() string {
	u := t.UUID()
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func uuidOf(root [HashSize]byte) [16]byte {
	s := sha256.Sum256(append([]byte("imgctl dm-verity uuid v1\x00"), root[:]...))
	var u [16]byte
	copy(u[:], s[:16])
	u[6] = u[6]&0x0f | 0x80 // version 8: custom
	u[8] = u[8]&0x3f | 0x80 // variant RFC 9562
	return u
}

// HashArea is what follows the data on the device: the superblock's block, then the tree's
// blocks, highest level first (HashAreaSize(DataBlocks) bytes).
func (t *Tree) HashArea() []byte {
	area := make([]byte, BlockSize, HashAreaSize(t.DataBlocks))
	putSuperblock(area, t.DataBlocks, t.UUID())
	block := make([]byte, BlockSize)
	for l := len(t.levels) - 1; l >= 0; l-- {
		hashes := t.levels[l]
		for i := 0; i*hashesPerBlock < len(hashes); i++ {
			fillBlock(block, hashes, i)
			area = append(area, block...)
		}
	}
	return area
}

// The superblock (veritysetup's struct verity_sb, little-endian, 512 bytes).
const (
	sbSignature = "verity\x00\x00"
	sbVersion   = 1
	sbHashType  = 1 // format 1: salt first, hashes padded to a power of two
	sbSize      = 512

	offSignature     = 0
	offVersion       = 8
	offHashType      = 12
	offUUID          = 16
	offAlgorithm     = 32
	offDataBlockSize = 64
	offHashBlockSize = 68
	offDataBlocks    = 72
	offSaltSize      = 80
	offSalt          = 88
	saltMax          = 256
)

func putSuperblock(b []byte, dataBlocks uint64, uuid [16]byte) {
	le := binary.LittleEndian
	copy(b[offSignature:], sbSignature)
	le.PutUint32(b[offVersion:], sbVersion)
	le.PutUint32(b[offHashType:], sbHashType)
	copy(b[offUUID:], uuid[:])
	copy(b[offAlgorithm:], Algorithm)
	le.PutUint32(b[offDataBlockSize:], BlockSize)
	le.PutUint32(b[offHashBlockSize:], BlockSize)
	le.PutUint64(b[offDataBlocks:], dataBlocks)
	le.PutUint16(b[offSaltSize:], uint16(len(Salt)))
	copy(b[offSalt:], Salt)
}

// ParseRootHash parses a root hash: 64 lower-case hex digits.
func ParseRootHash(s string) ([HashSize]byte, error) {
	var h [HashSize]byte
	if len(s) != 2*HashSize {
		return h, fmt.Errorf("verity root hash %q: want %d lower-case hex digits, have %d characters", s, 2*HashSize, len(s))
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return h, fmt.Errorf("verity root hash %q: want %d lower-case hex digits", s, 2*HashSize)
		}
	}
	hex.Decode(h[:], []byte(s)) // checked above
	return h, nil
}

// ParseHashArea checks a hash area as HashArea writes it for dataBlocks data blocks with root
// hash rootHash — its size, every byte of the superblock's block (imgctl's parameters and salt,
// the UUID of rootHash, zero padding) and every hash block of every level (against the level
// above, the top one against rootHash; zero padding) — and returns the data blocks' hashes.
func ParseHashArea(area []byte, rootHash [HashSize]byte, dataBlocks uint64) ([][HashSize]byte, error) {
	if dataBlocks == 0 {
		return nil, errors.New("verity hash area: 0 data blocks: want at least one")
	}
	if want := HashAreaSize(dataBlocks); int64(len(area)) != want {
		return nil, fmt.Errorf("verity hash area: %d bytes, want %d for %d data blocks", len(area), want, dataBlocks)
	}
	if err := checkSuperblock(area[:BlockSize], dataBlocks, uuidOf(rootHash)); err != nil {
		return nil, fmt.Errorf("verity hash area: superblock: %w", err)
	}
	counts := levelCounts(dataBlocks)
	if len(counts) == 0 {
		return [][HashSize]byte{rootHash}, nil // one data block: its hash is the root hash
	}
	// Levels lie highest first: find each level's blocks.
	start := make([]int64, len(counts))
	pos := int64(BlockSize)
	for l := len(counts) - 1; l >= 0; l-- {
		start[l] = pos
		pos += int64(counts[l]) * BlockSize
	}
	// want holds the hashes the blocks of level l must have: the root hash for the top level,
	// then the hashes read from the level above.
	want := [][HashSize]byte{rootHash}
	for l := len(counts) - 1; l >= 0; l-- {
		entries := dataBlocks // hashes held by this level
		if l > 0 {
			entries = counts[l-1]
		}
		hashes := make([][HashSize]byte, entries)
		for i := uint64(0); i < counts[l]; i++ {
			block := area[start[l]+int64(i)*BlockSize : start[l]+int64(i+1)*BlockSize]
			if HashBlock(block) != want[i] {
				if l == len(counts)-1 {
					return nil, fmt.Errorf("verity hash area: level %d (top) does not hash to the root hash %x", l, rootHash)
				}
				return nil, fmt.Errorf("verity hash area: level %d block %d does not match its hash in level %d", l, i, l+1)
			}
			// The block's hash covers its zero padding too.
			n := min(uint64(hashesPerBlock), entries-i*hashesPerBlock)
			for j := range n {
				copy(hashes[i*hashesPerBlock+j][:], block[j*HashSize:])
			}
		}
		want = hashes
	}
	return want, nil
}

// CheckSuperblock checks the superblock at the start of b (the hash area's first block, at
// least its 512 bytes) against what HashArea writes for dataBlocks data blocks with root hash
// rootHash: imgctl's parameters and salt and the UUID derived from rootHash. The node's init
// calls it before mapping a root, so a wrong offset or a root hash for another image fails
// with what differs instead of as an I/O error later.
func CheckSuperblock(b []byte, dataBlocks uint64, rootHash [HashSize]byte) error {
	if len(b) < sbSize {
		return fmt.Errorf("verity superblock: %d bytes, want at least %d", len(b), sbSize)
	}
	if err := checkSuperblock(b[:min(len(b), BlockSize)], dataBlocks, uuidOf(rootHash)); err != nil {
		return fmt.Errorf("verity superblock: %w", err)
	}
	return nil
}

func checkSuperblock(b []byte, dataBlocks uint64, uuid [16]byte) error {
	le := binary.LittleEndian
	if s := b[offSignature : offSignature+8]; string(s) != sbSignature {
		return fmt.Errorf("signature %q, want %q", s, sbSignature)
	}
	if v := le.Uint32(b[offVersion:]); v != sbVersion {
		return fmt.Errorf("version %d, want %d", v, sbVersion)
	}
	if v := le.Uint32(b[offHashType:]); v != sbHashType {
		return fmt.Errorf("hash type %d, want %d", v, sbHashType)
	}
	if u := b[offUUID : offUUID+16]; !bytes.Equal(u, uuid[:]) {
		return fmt.Errorf("UUID %x, want %x (derived from the root hash)", u, uuid)
	}
	var alg [32]byte
	copy(alg[:], Algorithm)
	if a := b[offAlgorithm : offAlgorithm+32]; !bytes.Equal(a, alg[:]) {
		return fmt.Errorf("algorithm %q, want %q", bytes.TrimRight(a, "\x00"), Algorithm)
	}
	if v := le.Uint32(b[offDataBlockSize:]); v != BlockSize {
		return fmt.Errorf("data block size %d, want %d", v, BlockSize)
	}
	if v := le.Uint32(b[offHashBlockSize:]); v != BlockSize {
		return fmt.Errorf("hash block size %d, want %d", v, BlockSize)
	}
	if v := le.Uint64(b[offDataBlocks:]); v != dataBlocks {
		return fmt.Errorf("%d data blocks, want %d", v, dataBlocks)
	}
	if !allZero(b[offSaltSize+2 : offSalt]) {
		return errors.New("padding after the salt size is not zero")
	}
	n := le.Uint16(b[offSaltSize:])
	if int(n) != len(Salt) || !bytes.Equal(b[offSalt:offSalt+int(n)], Salt) {
		return fmt.Errorf("salt %x, want imgctl's %x", b[offSalt:offSalt+min(int(n), saltMax)], Salt)
	}
	if !allZero(b[offSalt+len(Salt):]) {
		return errors.New("bytes after the salt are not zero")
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// DataSize splits the size of a blob that is data followed by its hash area (as the builder
// stores the root squashfs) into the data's size; false when no data size gives that total.
func DataSize(total int64) (int64, bool) {
	if total < 2*BlockSize || total%BlockSize != 0 {
		return 0, false
	}
	// data + HashAreaSize(data) grows with data: search the block count.
	lo, hi := uint64(1), uint64(total/BlockSize)
	for lo < hi {
		mid := lo + (hi-lo)/2
		if int64(mid)*BlockSize+HashAreaSize(mid) < total {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if int64(lo)*BlockSize+HashAreaSize(lo) != total {
		return 0, false
	}
	return int64(lo) * BlockSize, true
}

// Appended is the tree found at the end of a blob by ReadAppended.
type Appended struct {
	DataSize int64 // the hash area's offset
	RootHash [HashSize]byte
	Leaves   [][HashSize]byte
}

// ReadAppended reads the hash area at the end of a blob of size total (data, then HashArea)
// and checks it as ParseHashArea does, against the root hash its top block gives (the data
// block's hash for one block). It checks the tree's consistency, not its authenticity: a blob
// whose digest was verified (the store's), or a root hash from elsewhere compared with the
// result, gives that.
func ReadAppended(r io.ReaderAt, total int64) (Appended, error) {
	dataSize, ok := DataSize(total)
	if !ok {
		return Appended{}, fmt.Errorf("verity: %d bytes is not a whole number of data blocks followed by their hash area", total)
	}
	blocks := uint64(dataSize / BlockSize)
	area := make([]byte, HashAreaSize(blocks))
	if _, err := r.ReadAt(area, dataSize); err != nil {
		return Appended{}, fmt.Errorf("verity: reading the hash area at %d: %w", dataSize, err)
	}
	top := make([]byte, BlockSize)
	if blocks == 1 {
		if _, err := r.ReadAt(top, 0); err != nil {
			return Appended{}, fmt.Errorf("verity: reading the data block: %w", err)
		}
	} else {
		copy(top, area[BlockSize:])
	}
	root := HashBlock(top)
	leaves, err := ParseHashArea(area, root, blocks)
	if err != nil {
		return Appended{}, err
	}
	return Appended{DataSize: dataSize, RootHash: root, Leaves: leaves}, nil
}
