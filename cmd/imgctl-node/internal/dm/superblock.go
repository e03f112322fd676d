package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// The veritysetup superblock (cryptsetup's struct verity_sb, 512 bytes, little-endian) at the
// start of the hash area:
//
//	off  size  field
//	  0     8  signature "verity\0\0"
//	  8     4  version (1)
//	 12     4  hash_type (1: normal; 0: Chrome OS)
//	 16    16  uuid
//	 32    32  algorithm, NUL-padded ("sha256")
//	 64     4  data_block_size
//	 68     4  hash_block_size
//	 72     8  data_blocks
//	 80     2  salt_size
//	 82     6  padding
//	 88   256  salt
//	344   168  padding
const SuperblockSize = 512

// Superblock is what the table needs from a verity superblock.
type Superblock struct {
	HashType      uint32
	Algorithm     string
	DataBlockSize uint32
	HashBlockSize uint32
	DataBlocks    uint64
	Salt          []byte
}

// ReadSuperblock reads the verity superblock at off (the hash area's start) and checks it is
// the format the init maps: version 1, normal hash type, sha256, 4096-byte blocks, and data
// blocks ending exactly at off. The superblock is not trusted beyond that: the salt it gives
// enters every hash, so a changed salt fails verification against the root hash.
func ReadSuperblock(r io.ReaderAt, off int64) (Superblock, error) {
	b := make([]byte, SuperblockSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return Superblock{}, fmt.Errorf("verity superblock at offset %d: %w", off, err)
	}
	if !bytes.Equal(b[:8], []byte("verity\x00\x00")) {
		return Superblock{}, fmt.Errorf("no verity superblock at offset %d (first bytes %x, want \"verity\")", off, b[:8])
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != 1 {
		return Superblock{}, fmt.Errorf("verity superblock at offset %d: version %d, want 1", off, v)
	}
	sb := Superblock{
		HashType:      le.Uint32(b[12:]),
		Algorithm:     cString(b[32:64]),
		DataBlockSize: le.Uint32(b[64:]),
		HashBlockSize: le.Uint32(b[68:]),
		DataBlocks:    le.Uint64(b[72:]),
	}
	n := int(le.Uint16(b[80:]))
	if n > 256 {
		return Superblock{}, fmt.Errorf("verity superblock at offset %d: salt size %d, at most 256", off, n)
	}
	sb.Salt = bytes.Clone(b[88 : 88+n])
	switch {
	case sb.HashType != 1:
		return sb, fmt.Errorf("verity superblock at offset %d: hash type %d, want 1 (normal)", off, sb.HashType)
	case sb.Algorithm != "sha256":
		return sb, fmt.Errorf("verity superblock at offset %d: algorithm %q, want sha256", off, sb.Algorithm)
	case sb.DataBlockSize != VerityBlockSize || sb.HashBlockSize != VerityBlockSize:
		return sb, fmt.Errorf("verity superblock at offset %d: block sizes %d/%d, want %d", off, sb.DataBlockSize, sb.HashBlockSize, VerityBlockSize)
	case sb.DataBlocks*VerityBlockSize != uint64(off):
		return sb, fmt.Errorf("verity superblock at offset %d: %d data blocks end at %d, not at the superblock", off, sb.DataBlocks, sb.DataBlocks*VerityBlockSize)
	}
	return sb, nil
}
