package publication

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// BlockSize is the EBS direct APIs' block size.
const BlockSize = 512 << 10

// Hashes are the sha256 of each block of a disk that is not all zeros, by block index; blocks
// not listed are zeros. Two disks' Hashes say which blocks differ without reading either.
type Hashes struct {
	BlockSize int64
	Blocks    int64 // blocks of the disk
	sums      map[int64][sha256.Size]byte
}

// NewHashes returns the hashes of a disk of blocks blocks of blockSize bytes, all zeros.
func NewHashes(blockSize, blocks int64) *Hashes {
	return &Hashes{BlockSize: blockSize, Blocks: blocks, sums: map[int64][sha256.Size]byte{}}
}

// Set records block i's hash; the zero hash is not special (use Delete for a zero block).
func (h *Hashes) Set(i int64, sum [sha256.Size]byte) { h.sums[i] = sum }

// Delete records block i as zeros.
func (h *Hashes) Delete(i int64) { delete(h.sums, i) }

// Get returns block i's hash, and false for a zero block.
func (h *Hashes) Get(i int64) ([sha256.Size]byte, bool) {
	s, ok := h.sums[i]
	return s, ok
}

// Len is the number of blocks that are not zeros.
func (h *Hashes) Len() int { return len(h.sums) }

// Indexes returns the indexes of the blocks that are not zeros, in order.
func (h *Hashes) Indexes() []int64 {
	out := make([]int64, 0, len(h.sums))
	for i := range h.sums {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// Same reports whether block i holds the same bytes in h and o (both zeros counts).
func (h *Hashes) Same(o *Hashes, i int64) bool {
	a, aok := h.sums[i]
	b, bok := o.sums[i]
	return aok == bok && a == b
}

const hashesMagic = "imgctl-block-hashes-v1\n"

// MarshalBinary encodes h: the magic line, block size and block count (uint64 big endian),
// then each non-zero block's index (uint64) and sha256, by index.
func (h *Hashes) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(len(hashesMagic) + 16 + len(h.sums)*(8+sha256.Size))
	b.WriteString(hashesMagic)
	b.Write(binary.BigEndian.AppendUint64(nil, uint64(h.BlockSize)))
	b.Write(binary.BigEndian.AppendUint64(nil, uint64(h.Blocks)))
	for _, i := range h.Indexes() {
		s := h.sums[i]
		b.Write(binary.BigEndian.AppendUint64(nil, uint64(i)))
		b.Write(s[:])
	}
	return b.Bytes(), nil
}

// maxBlocks bounds a decoded disk (64 TiB of 512 KiB blocks, EBS's largest volume).
const maxBlocks = 64 << 40 / BlockSize

// UnmarshalBinary decodes what MarshalBinary wrote, refusing anything else.
func (h *Hashes) UnmarshalBinary(data []byte) error {
	rest, ok := bytes.CutPrefix(data, []byte(hashesMagic))
	if !ok || len(rest) < 16 {
		return errors.New("block hashes: not an imgctl block hash list")
	}
	bs, n := int64(binary.BigEndian.Uint64(rest)), int64(binary.BigEndian.Uint64(rest[8:]))
	rest = rest[16:]
	const entry = 8 + sha256.Size
	switch {
	case bs <= 0 || bs > 64<<20 || bs%4096 != 0:
		return fmt.Errorf("block hashes: block size %d (expected a multiple of 4096 up to 64 MiB)", bs)
	case n < 0 || n > maxBlocks:
		return fmt.Errorf("block hashes: %d blocks (expected at most %d)", n, int64(maxBlocks))
	case len(rest)%entry != 0 || int64(len(rest)/entry) > n:
		return fmt.Errorf("block hashes: %d bytes of entries for a disk of %d blocks", len(rest), n)
	}
	sums := make(map[int64][sha256.Size]byte, len(rest)/entry)
	prev := int64(-1)
	for ; len(rest) > 0; rest = rest[entry:] {
		i := int64(binary.BigEndian.Uint64(rest))
		if i <= prev || i >= n {
			return fmt.Errorf("block hashes: block index %d out of order or past %d blocks", i, n)
		}
		prev = i
		sums[i] = [sha256.Size]byte(rest[8:entry])
	}
	*h = Hashes{BlockSize: bs, Blocks: n, sums: sums}
	return nil
}
