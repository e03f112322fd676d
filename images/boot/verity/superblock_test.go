package verity

import (
	"bytes"
	"strings"
	"testing"
)

// CheckSuperblock accepts the superblock HashArea wrote for its tree and refuses one for other
// data, another root hash or no superblock at all, saying what differs.
func TestCheckSuperblock(t *testing.T) {
	tree := build(t, bytes.Repeat([]byte{7}, 3*BlockSize))
	sb := tree.HashArea()[:BlockSize]
	if err := CheckSuperblock(sb, 3, tree.RootHash); err != nil {
		t.Fatalf("CheckSuperblock of its own tree: %v", err)
	}
	other := tree.RootHash
	other[0] ^= 1
	for name, c := range map[string]struct {
		b      []byte
		blocks uint64
		root   [HashSize]byte
		want   string
	}{
		"other root hash":  {sb, 3, other, "UUID"},
		"other size":       {sb, 4, tree.RootHash, "3 data blocks, want 4"},
		"not a superblock": {make([]byte, BlockSize), 3, tree.RootHash, "signature"},
		"short":            {sb[:100], 3, tree.RootHash, "100 bytes"},
	} {
		if err := CheckSuperblock(c.b, c.blocks, c.root); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}
