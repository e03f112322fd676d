package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// data is n blocks of reproducible pseudo-random bytes.
func data(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n*BlockSize)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func build(t *testing.T, d []byte) *Tree {
	t.Helper()
	tr, err := Build(context.Background(), bytes.NewReader(d), int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestSalt(t *testing.T) {
	s := sha256.Sum256([]byte("imgctl dm-verity salt v1"))
	if !bytes.Equal(Salt, s[:]) || hex.EncodeToString(Salt) != "3dc956756da63fce9e299263c311a5058c1eee739b361e5964c9212d9994709c" {
		t.Errorf("Salt = %x", Salt)
	}
}

func TestHashAreaSize(t *testing.T) {
	const B = BlockSize
	for _, tc := range []struct {
		blocks uint64
		want   int64
	}{
		{0, B},                 // no data: the superblock's block only (Build refuses it)
		{1, B},                 // one block: its hash is the root hash, no tree
		{2, 2 * B},             // one level of one block
		{127, 2 * B},           //
		{128, 2 * B},           // a full hash block
		{129, (1 + 2 + 1) * B}, // two level-0 blocks and a top block
		{128 * 128, (1 + 128 + 1) * B},
		{128*128 + 1, (1 + 129 + 2 + 1) * B},
		{56_000, (1 + 438 + 4 + 1) * B}, // a 220 MB root
		{1 << 30, (1 + 1<<23 + 1<<16 + 1<<9 + 4 + 1) * B},
	} {
		if got := HashAreaSize(tc.blocks); got != tc.want {
			t.Errorf("HashAreaSize(%d) = %d, want %d", tc.blocks, got, tc.want)
		}
	}
	for _, n := range []int{1, 2, 127, 128, 129} {
		tr := build(t, data(n, uint64(n)))
		if got := int64(len(tr.HashArea())); got != HashAreaSize(uint64(n)) {
			t.Errorf("%d blocks: HashArea is %d bytes, HashAreaSize %d", n, got, HashAreaSize(uint64(n)))
		}
	}
}

func TestHashStart(t *testing.T) {
	if got := HashStart(5 * BlockSize); got != 6 {
		t.Errorf("HashStart(5 blocks) = %d, want 6 (the tree follows the superblock's block)", got)
	}
}

var rootHashLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]{64})$`)

// veritysetup runs the oracle on file and returns its output.
func veritysetup(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("veritysetup", args...).CombinedOutput()
	return string(out), err
}

// TestVeritysetupOracle: veritysetup format, given our salt and UUID, writes the same root
// hash and the same hash area bytes as Build, and veritysetup verify accepts what Build wrote
// (and refuses it after a flipped data byte: the oracle can say no).
func TestVeritysetupOracle(t *testing.T) {
	testenv.Integration(t, "veritysetup")
	testenv.Tools(t, "veritysetup")
	dir := t.TempDir()
	for _, n := range []int{1, 2, 127, 128, 129, 128*128 + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			d := data(n, uint64(n))
			tr := build(t, d)
			offset := fmt.Sprint(len(d))
			theirs := filepath.Join(dir, fmt.Sprintf("theirs-%d", n))
			if err := os.WriteFile(theirs, d, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := veritysetup(t, "format", "--format=1", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
				"--data-blocks="+fmt.Sprint(n), "--hash-offset="+offset, "--salt="+hex.EncodeToString(Salt), "--uuid="+tr.UUIDString(), "--", theirs, theirs)
			if err != nil {
				t.Fatalf("veritysetup format: %v\n%s", err, out)
			}
			m := rootHashLine.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no root hash in veritysetup's output:\n%s", out)
			}
			if m[1] != tr.RootHashHex() {
				t.Errorf("root hash %s, veritysetup %s", tr.RootHashHex(), m[1])
			}
			got, err := os.ReadFile(theirs)
			if err != nil {
				t.Fatal(err)
			}
			if area := tr.HashArea(); !bytes.Equal(got[len(d):], area) {
				t.Errorf("hash area differs from veritysetup's: %d bytes vs %d, first difference at %d", len(area), len(got)-len(d), firstDiff(area, got[len(d):]))
			}

			ours := filepath.Join(dir, fmt.Sprintf("ours-%d", n))
			if err := os.WriteFile(ours, append(d, tr.HashArea()...), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := veritysetup(t, "verify", "--hash-offset="+offset, "--", ours, ours, tr.RootHashHex()); err != nil {
				t.Errorf("veritysetup verify refuses Build's hash area: %v\n%s", err, out)
			}
			f, err := os.OpenFile(ours, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			flip := int64(len(d)) - 1
			if _, err := f.WriteAt([]byte{d[flip] ^ 1}, flip); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if out, err := veritysetup(t, "verify", "--hash-offset="+offset, "--", ours, ours, tr.RootHashHex()); err == nil {
				t.Errorf("veritysetup verify accepts a flipped data byte:\n%s", out)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestParseHashAreaReturnsLeaves(t *testing.T) {
	for _, n := range []int{1, 2, 127, 128, 129, 300} {
		d := data(n, uint64(n)+100)
		tr := build(t, d)
		leaves, err := ParseHashArea(tr.HashArea(), tr.RootHash, uint64(n))
		if err != nil {
			t.Fatalf("%d blocks: %v", n, err)
		}
		if len(leaves) != n {
			t.Fatalf("%d blocks: %d leaves", n, len(leaves))
		}
		for i := range n {
			if want := HashBlock(d[i*BlockSize : (i+1)*BlockSize]); leaves[i] != want || tr.Leaves()[i] != want {
				t.Fatalf("%d blocks: leaf %d = %x, Leaves %x, want %x", n, i, leaves[i], tr.Leaves()[i], want)
			}
		}
	}
}

// TestEqualBlocksEqualLeaves: the fixed salt makes a block's leaf the same in every image, at
// any position: what the node's update reuses blocks by.
func TestEqualBlocksEqualLeaves(t *testing.T) {
	a := data(10, 1)
	b := append(data(3, 2), a[4*BlockSize:8*BlockSize]...)
	ta, tb := build(t, a), build(t, b)
	for i := range 4 {
		if ta.Leaves()[4+i] != tb.Leaves()[3+i] {
			t.Errorf("block %d of a and block %d of b are equal, their leaves differ", 4+i, 3+i)
		}
	}
	if ta.RootHash == tb.RootHash {
		t.Error("different data, same root hash")
	}
	if again := build(t, a); !bytes.Equal(again.HashArea(), ta.HashArea()) {
		t.Error("the same data gave another hash area")
	}
}

// TestParseHashAreaRejectsFlippedBytes: every byte of the superblock's block, and the first,
// a middle and the last byte of every hash block of every level, flipped → refused, the error
// naming the superblock or the level.
func TestParseHashAreaRejectsFlippedBytes(t *testing.T) {
	for _, n := range []int{2, 129, 128*128 + 1} {
		tr := build(t, data(n, 7))
		area := tr.HashArea()
		var positions []int
		for i := range BlockSize {
			positions = append(positions, i)
		}
		for b := BlockSize; b < len(area); b += BlockSize {
			positions = append(positions, b, b+BlockSize/2+5, b+BlockSize-1)
		}
		for _, p := range positions {
			bad := bytes.Clone(area)
			bad[p] ^= 0x40
			_, err := ParseHashArea(bad, tr.RootHash, uint64(n))
			want := "level"
			if p < BlockSize {
				want = "superblock"
			}
			if err == nil || !strings.HasPrefix(err.Error(), "verity hash area: ") || !strings.Contains(err.Error(), want) {
				t.Fatalf("%d blocks, byte %d flipped: err = %v, want one naming the %s", n, p, err, want)
			}
		}
	}
}

func TestParseHashAreaErrors(t *testing.T) {
	d := data(129, 9)
	tr := build(t, d)
	area := tr.HashArea()
	other := build(t, data(129, 10))
	set := func(off int, b ...byte) []byte { a := bytes.Clone(area); copy(a[off:], b); return a }
	for _, tc := range []struct {
		name   string
		area   []byte
		root   [HashSize]byte
		blocks uint64
		want   string
	}{
		{"wrong root hash", other.HashArea(), tr.RootHash, 129, "superblock: UUID"},
		{"the UUID of another root hash", set(offUUID, func() []byte { u := tr.UUID(); return u[:] }()...), other.RootHash, 129, "superblock: UUID"},
		{"top level", func() []byte {
			a := bytes.Clone(other.HashArea())
			copy(a[offUUID:], func() []byte { u := tr.UUID(); return u[:] }())
			return a
		}(), tr.RootHash, 129, "level 1 (top) does not hash to the root hash"},
		{"fewer blocks", area, tr.RootHash, 128, "16384 bytes, want 8192 for 128 data blocks"},
		{"no blocks", area, tr.RootHash, 0, "0 data blocks"},
		{"signature", set(0, 'V'), tr.RootHash, 129, `signature "Verity\x00\x00", want "verity\x00\x00"`},
		{"version", set(offVersion, 2), tr.RootHash, 129, "version 2, want 1"},
		{"chrome format", set(offHashType, 0), tr.RootHash, 129, "hash type 0, want 1"},
		{"algorithm", set(offAlgorithm, []byte("sha512")...), tr.RootHash, 129, `algorithm "sha512", want "sha256"`},
		{"data block size", set(offDataBlockSize+1, 2), tr.RootHash, 129, "data block size 512, want 4096"},
		{"hash block size", set(offHashBlockSize+1, 2), tr.RootHash, 129, "hash block size 512, want 4096"},
		{"data blocks", set(offDataBlocks, 128), tr.RootHash, 129, "128 data blocks, want 129"},
		{"salt size", set(offSaltSize, 16), tr.RootHash, 129, "salt 3dc956756da63fce9e299263c311a505, want imgctl's"},
		{"salt", set(offSalt, 0), tr.RootHash, 129, "salt 00c95675"},
		{"after the salt", set(offSalt+32, 1), tr.RootHash, 129, "bytes after the salt are not zero"},
		{"block padding", set(BlockSize-1, 1), tr.RootHash, 129, "bytes after the salt are not zero"},
		{"level 0", set(2*BlockSize+100, 1), tr.RootHash, 129, "level 0 block 0 does not match its hash in level 1"},
		{"level 0 second block padding", set(4*BlockSize-1, 1), tr.RootHash, 129, "level 0 block 1 does not match its hash in level 1"},
	} {
		_, err := ParseHashArea(tc.area, tc.root, tc.blocks)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestParseHashAreaTruncated: every length but the right one is refused before anything is
// read past the end.
func TestParseHashAreaTruncated(t *testing.T) {
	for _, n := range []int{1, 129} {
		tr := build(t, data(n, 11))
		area := tr.HashArea()
		for _, l := range []int{0, 1, 8, 511, 512, 4095, BlockSize, BlockSize + 1, len(area) - BlockSize, len(area) - 1, len(area) + 1, len(area) + BlockSize} {
			if l == len(area) {
				continue
			}
			a := make([]byte, l)
			copy(a, area)
			_, err := ParseHashArea(a, tr.RootHash, uint64(n))
			want := fmt.Sprintf("verity hash area: %d bytes, want %d for %d data blocks", l, len(area), n)
			if err == nil || err.Error() != want {
				t.Errorf("%d blocks, %d bytes: err = %v, want %q", n, l, err, want)
			}
		}
	}
}

// FuzzParseHashArea: no input makes ParseHashArea panic or accept bytes other than the tree's.
func FuzzParseHashArea(f *testing.F) {
	tr, err := Build(context.Background(), bytes.NewReader(data(130, 3)), 130*BlockSize)
	if err != nil {
		f.Fatal(err)
	}
	area := tr.HashArea()
	f.Add(area, uint64(130))
	f.Add(area[:BlockSize], uint64(1))
	f.Add(area[:len(area)-1], uint64(130))
	f.Add([]byte{}, uint64(0))
	f.Add(make([]byte, 3*BlockSize), uint64(1<<63))
	f.Fuzz(func(t *testing.T, a []byte, blocks uint64) {
		leaves, err := ParseHashArea(a, tr.RootHash, blocks)
		if err == nil && (blocks != 130 || !bytes.Equal(a, area) || len(leaves) != 130) {
			t.Errorf("accepted %d bytes for %d blocks", len(a), blocks)
		}
	})
}

func TestBuildErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		r    io.Reader
		size int64
		want string
	}{
		{"empty", bytes.NewReader(nil), 0, "verity: data size 0: want a positive multiple of 4096"},
		{"unaligned", bytes.NewReader(make([]byte, 5000)), 5000, "verity: data size 5000: want a positive multiple of 4096"},
		{"short", bytes.NewReader(make([]byte, 2*BlockSize+10)), 3 * BlockSize, "verity: data ends in block 2 of 3: unexpected EOF"},
		{"read error", io.MultiReader(bytes.NewReader(make([]byte, BlockSize)), errReader{}), 2 * BlockSize, "verity: reading data block 1: disk on fire"},
	} {
		_, err := Build(ctx, tc.r, tc.size)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Build(cctx, bytes.NewReader(make([]byte, BlockSize)), BlockSize); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseRootHash(t *testing.T) {
	good := strings.Repeat("0123456789abcdef", 4)
	h, err := ParseRootHash(good)
	if err != nil || hex.EncodeToString(h[:]) != good {
		t.Errorf("ParseRootHash(%q) = %x, %v", good, h, err)
	}
	for _, s := range []string{"", good[:63], good + "0", strings.ToUpper(good), good[:63] + "g", " " + good[1:]} {
		if _, err := ParseRootHash(s); err == nil || !strings.Contains(err.Error(), "want 64 lower-case hex digits") {
			t.Errorf("ParseRootHash(%q) = %v", s, err)
		}
	}
}

func TestUUIDString(t *testing.T) {
	tr := build(t, data(2, 1))
	u := tr.UUIDString()
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
		t.Errorf("UUID %q is not an RFC 9562 version 8 UUID", u)
	}
	if area := tr.HashArea(); !bytes.Equal(area[offUUID:offUUID+16], func() []byte { x := tr.UUID(); return x[:] }()) {
		t.Error("the superblock's UUID is not Tree.UUID")
	}
}

func TestDataSize(t *testing.T) {
	for _, n := range []uint64{1, 2, 127, 128, 129, 300, 128 * 128, 128*128 + 1, 56_000, 1 << 30} {
		total := int64(n)*BlockSize + HashAreaSize(n)
		if got, ok := DataSize(total); !ok || got != int64(n)*BlockSize {
			t.Errorf("DataSize(%d) = %d, %v; want %d blocks", total, got, ok, n)
		}
	}
	// Sizes between two valid ones (128 blocks give 130, 129 give 133), unaligned and too small ones.
	for _, total := range []int64{0, BlockSize, BlockSize + 1, 3 * BlockSize, 131 * BlockSize, 132 * BlockSize, 133*BlockSize + 1, -BlockSize} {
		if got, ok := DataSize(total); ok {
			t.Errorf("DataSize(%d) = %d, want none", total, got)
		}
	}
}

func TestReadAppended(t *testing.T) {
	for _, n := range []int{1, 2, 129} {
		d := data(n, 21)
		tr := build(t, d)
		blob := append(bytes.Clone(d), tr.HashArea()...)
		a, err := ReadAppended(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			t.Fatalf("%d blocks: %v", n, err)
		}
		if a.DataSize != int64(len(d)) || a.RootHash != tr.RootHash || len(a.Leaves) != n || a.Leaves[n-1] != tr.Leaves()[n-1] {
			t.Errorf("%d blocks: ReadAppended = size %d root %x, want %d %x", n, a.DataSize, a.RootHash, len(d), tr.RootHash)
		}
		// A changed level-0 block no longer matches the top block.
		bad := bytes.Clone(blob)
		bad[len(bad)-1] ^= 1
		if _, err := ReadAppended(bytes.NewReader(bad), int64(len(bad))); err == nil {
			t.Errorf("%d blocks: a flipped last byte is accepted", n)
		}
	}
	if _, err := ReadAppended(bytes.NewReader(make([]byte, 3*BlockSize)), 3*BlockSize); err == nil || err.Error() != "verity: 12288 bytes is not a whole number of data blocks followed by their hash area" {
		t.Errorf("err = %v", err)
	}
	short := data(2, 1)
	if _, err := ReadAppended(bytes.NewReader(short), 4*BlockSize); err == nil || !strings.Contains(err.Error(), "reading the hash area at 8192: EOF") {
		t.Errorf("short reader: err = %v", err)
	}
}
