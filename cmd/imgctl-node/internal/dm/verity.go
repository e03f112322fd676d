package dm

import (
	"encoding/hex"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/images/boot/verity"
)

// Verity describes a dm-verity device in imgctl's format (package images/boot/verity) whose
// data and hash tree are on one block device: DataBlocks blocks of data from its start, the
// veritysetup superblock at HashOffset (a multiple of verity.BlockSize, usually the data size)
// and the tree in the blocks after it.
type Verity struct {
	Dev        uint64 // the block device's number (unix.Mkdev)
	DataBlocks uint64
	HashOffset int64  // bytes from the device's start to the verity superblock
	RootHash   []byte // sha256: 32 bytes
	Salt       []byte
}

// Target is the verity table line (Documentation/admin-guide/device-mapper/verity.rst):
//
//	1 DEV DEV 4096 4096 DATA_BLOCKS HASH_START sha256 ROOT_HASH SALT
//
// HASH_START counts hash blocks from the device's start to the tree's first block: the one
// after the superblock (verity.HashStart). No optional arguments: a corrupted block fails its
// read with EIO.
func (v Verity) Target() (Target, error) {
	if v.DataBlocks == 0 {
		return Target{}, fmt.Errorf("verity: no data blocks")
	}
	if v.HashOffset <= 0 || v.HashOffset%verity.BlockSize != 0 {
		return Target{}, fmt.Errorf("verity: hash offset %d is not a positive multiple of %d", v.HashOffset, verity.BlockSize)
	}
	if uint64(v.HashOffset/verity.BlockSize) < v.DataBlocks {
		return Target{}, fmt.Errorf("verity: hash offset %d lies inside the %d data blocks", v.HashOffset, v.DataBlocks)
	}
	if len(v.RootHash) != verity.HashSize {
		return Target{}, fmt.Errorf("verity: root hash is %d bytes, want %d (%s)", len(v.RootHash), verity.HashSize, verity.Algorithm)
	}
	salt := "-"
	if len(v.Salt) > 0 {
		salt = hex.EncodeToString(v.Salt)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(v.Dev), unix.Minor(v.Dev))
	return Target{
		Start:  0,
		Length: v.DataBlocks * (verity.BlockSize / 512),
		Type:   "verity",
		Params: fmt.Sprintf("1 %s %s %d %d %d %d %s %s %s", dev, dev, verity.BlockSize, verity.BlockSize,
			v.DataBlocks, verity.HashStart(v.HashOffset), verity.Algorithm, hex.EncodeToString(v.RootHash), salt),
	}, nil
}

// VerityState is the first field of a verity target's status line.
type VerityState string

// Verity states.
const (
	VerityOK      VerityState = "V" // every block read so far matched the tree
	VerityCorrupt VerityState = "C" // a block failed verification
)

// ParseVerityStatus reads the state of a verity target's status (the first field: V or C;
// newer kernels append more fields).
func ParseVerityStatus(st TargetStatus) (VerityState, error) {
	if st.Type != "verity" {
		return "", fmt.Errorf("target type %q is not verity", st.Type)
	}
	f, _, _ := strings.Cut(st.Params, " ")
	switch s := VerityState(f); s {
	case VerityOK, VerityCorrupt:
		return s, nil
	}
	return "", fmt.Errorf("verity status %q: want V or C first", st.Params)
}

// MapVerity creates the read-only device name mapping v (create, load, resume) and returns
// its device number. On failure it removes what it created.
func (c *Control) MapVerity(name string, v Verity) (dev uint64, err error) {
	t, err := v.Target()
	if err != nil {
		return 0, fmt.Errorf("map %s: %w", name, err)
	}
	if _, err := c.Create(name, ""); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			if rerr := c.Remove(name); rerr != nil {
				err = fmt.Errorf("%w (and removing it again: %w)", err, rerr)
			}
		}
	}()
	if err := c.Load(name, true, t); err != nil {
		return 0, err
	}
	return c.Resume(name)
}

// VerityState returns the state of name's verity target.
func (c *Control) VerityState(name string) (VerityState, error) {
	st, err := c.Status(name)
	if err != nil {
		return "", err
	}
	if len(st) != 1 {
		return "", fmt.Errorf("device-mapper status %q: %d targets, want one verity target", name, len(st))
	}
	s, err := ParseVerityStatus(st[0])
	if err != nil {
		return "", fmt.Errorf("device-mapper status %q: %w", name, err)
	}
	return s, nil
}
