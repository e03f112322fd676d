package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/boot/gpt"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
)

func TestDataBlocks(t *testing.T) {
	const bs = 100
	for _, c := range []struct {
		name string
		in   []sparse.Extent
		want []int64
	}{
		{"none", nil, nil},
		{"inside one block", []sparse.Extent{{Off: 10, Len: 20}}, []int64{0}},
		{"exactly one block", []sparse.Extent{{Off: 100, Len: 100}}, []int64{1}},
		{"across a boundary", []sparse.Extent{{Off: 190, Len: 20}}, []int64{1, 2}},
		{"two extents in one block", []sparse.Extent{{Off: 0, Len: 10}, {Off: 50, Len: 10}}, []int64{0}},
		{"adjacent extents sharing a block", []sparse.Extent{{Off: 0, Len: 150}, {Off: 150, Len: 100}}, []int64{0, 1, 2}},
		{"gap", []sparse.Extent{{Off: 0, Len: 1}, {Off: 1000, Len: 1}}, []int64{0, 10}},
		{"empty extent", []sparse.Extent{{Off: 500, Len: 0}}, nil},
	} {
		if got := dataBlocks(c.in, bs); !slices.Equal(got, c.want) {
			t.Errorf("%s: dataBlocks(%v) = %v, want %v", c.name, c.in, got, c.want)
		}
	}
}

// testDisk is a disk of sectors 512-byte sectors with a primary GPT (no backup) listing parts:
// name, first LBA and size in sectors each.
func testDisk(t *testing.T, sectors int64, parts ...[3]any) []byte {
	t.Helper()
	d := make([]byte, sectors*sectorSize)
	array := make([]byte, gpt.DefaultEntries*gpt.EntrySize)
	typ, err := gpt.ParseGUID(gpt.TypeLinuxData)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range parts {
		name, err := gpt.NewName(p[0].(string))
		if err != nil {
			t.Fatal(err)
		}
		first := uint64(p[1].(int))
		e := gpt.Entry{Type: typ, FirstLBA: first, LastLBA: first + uint64(p[2].(int)) - 1, Name: name}
		e.Put(array[i*gpt.EntrySize:])
	}
	copy(d[gpt.PrimaryEntriesLBA*sectorSize:], array)
	h := gpt.Header{Revision: gpt.Revision, Size: gpt.HeaderSize, MyLBA: 1, AlternateLBA: uint64(sectors - 1),
		FirstUsableLBA: 34, LastUsableLBA: uint64(sectors - 34), EntriesLBA: gpt.PrimaryEntriesLBA,
		NumEntries: gpt.DefaultEntries, EntrySize: gpt.EntrySize, EntriesCRC: gpt.ArrayCRC(array)}
	if err := h.Put(d[sectorSize : 2*sectorSize]); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPartitions(t *testing.T) {
	d := testDisk(t, 4096, [3]any{"ROOT-A", 2048, 1024}, [3]any{"ESP", 64, 1984})
	got, err := partitions(bytes.NewReader(d))
	if err != nil {
		t.Fatal(err)
	}
	want := []partition{{"ESP", 64 * 512, 1984 * 512}, {"ROOT-A", 2048 * 512, 1024 * 512}}
	if !slices.Equal(got, want) {
		t.Fatalf("partitions = %+v, want %+v (by start)", got, want)
	}

	d[2*sectorSize+100] ^= 1 // an entry byte: the array's CRC no longer matches
	if _, err := partitions(bytes.NewReader(d)); err == nil || !strings.Contains(err.Error(), "GPT entries: crc") {
		t.Fatalf("a corrupt entry array: err = %v, want a crc error", err)
	}
	if _, err := partitions(bytes.NewReader(make([]byte, 8192))); err == nil || !strings.Contains(err.Error(), "GPT header (LBA 1)") {
		t.Fatalf("no GPT: err = %v, want it to name the header", err)
	}
}

func sum(b byte) [32]byte { return sha256.Sum256([]byte{b}) }

func TestChanges(t *testing.T) {
	// 10 blocks of 100 bytes: P1 = blocks 1..4, P2 = blocks 5..8; blocks 0 and 9 outside.
	parts := []partition{{"P1", 100, 400}, {"P2", 500, 400}}
	old := publication.NewHashes(100, 10)
	cur := publication.NewHashes(100, 10)
	for i := range int64(10) {
		old.Set(i, sum(byte(i)))
		cur.Set(i, sum(byte(i)))
	}
	cur.Set(0, sum(100)) // outside: edited
	cur.Set(2, sum(102)) // P1: edited in place, block 3 and 4 unchanged
	cur.Delete(3)        // P1: became zeros: changed, not data
	old.Delete(6)        // P2: zeros in both: unchanged
	cur.Delete(6)
	cur.Set(7, sum(107)) // P2: every data block from 7 on changed
	cur.Set(8, sum(108))
	got, err := changes(old, cur, parts)
	if err != nil {
		t.Fatal(err)
	}
	want := []area{
		{Name: "P1", Blocks: 4, Data: 3, Changed: 2, FirstChanged: 100, TailFrom: -1},
		{Name: "P2", Blocks: 4, Data: 3, Changed: 2, FirstChanged: 200, TailFrom: 200, TailData: 2},
		{Name: outside, Blocks: 2, Data: 2, Changed: 1, FirstChanged: 0, TailFrom: -1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("changes =\n%+v\nwant\n%+v", got, want)
	}

	if _, err := changes(old, publication.NewHashes(100, 11), parts); err == nil {
		t.Fatal("disks of different sizes compared without an error")
	}
}

func TestBlockdiff(t *testing.T) {
	ctx := context.Background()
	a := bytes.Repeat([]byte("a"), 250) // blocks of 100: 0, 1, 2 (50 bytes)
	for _, c := range []struct {
		name string
		b    []byte
		want blockdiffResult
	}{
		{"same", bytes.Clone(a), blockdiffResult{Blocks: 3, Changed: 0, First: -1}},
		{"edited in block 1", append(append(bytes.Clone(a[:150]), 'b'), a[151:]...), blockdiffResult{Blocks: 3, Changed: 1, First: 1}},
		{"shifted by a byte from 120", append(append(bytes.Clone(a[:120]), 'b'), a[120:]...), blockdiffResult{Blocks: 3, Changed: 2, First: 1}},
		{"longer", append(bytes.Clone(a), bytes.Repeat([]byte("a"), 100)...), blockdiffResult{Blocks: 4, Changed: 2, First: 2}},
		{"empty", nil, blockdiffResult{Blocks: 3, Changed: 3, First: 0}},
	} {
		got, err := blockdiff(ctx, bytes.NewReader(a), bytes.NewReader(c.b), 100)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}
