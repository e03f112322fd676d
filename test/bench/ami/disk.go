package main

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/imgctl/imgctl/images/boot/gpt"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
)

// dataBlocks returns the indexes of the blockSize blocks that extents touch, in order, once
// each: the blocks a zero-skipping uploader reads and sends.
func dataBlocks(extents []sparse.Extent, blockSize int64) []int64 {
	var out []int64
	for _, e := range extents {
		if e.Len <= 0 {
			continue
		}
		first, last := e.Off/blockSize, (e.Off+e.Len-1)/blockSize
		if n := len(out); n > 0 && out[n-1] >= first {
			first = out[n-1] + 1
		}
		for i := first; i <= last; i++ {
			out = append(out, i)
		}
	}
	return out
}

// partition is one GPT entry in bytes.
type partition struct {
	Name        string
	Start, Size int64
}

const sectorSize = 512

// partitions reads the primary GPT of a disk of 512-byte sectors.
func partitions(r io.ReaderAt) ([]partition, error) {
	sector := make([]byte, sectorSize)
	if _, err := r.ReadAt(sector, sectorSize); err != nil {
		return nil, fmt.Errorf("reading the GPT header (LBA 1): %w", err)
	}
	h, err := gpt.DecodeHeader(sector)
	if err != nil {
		return nil, fmt.Errorf("GPT header (LBA 1): %w", err)
	}
	if h.EntrySize < gpt.EntrySize || h.NumEntries > 1024 {
		return nil, fmt.Errorf("GPT header: %d entries of %d bytes, want at most 1024 of at least %d", h.NumEntries, h.EntrySize, gpt.EntrySize)
	}
	array := make([]byte, int64(h.NumEntries)*int64(h.EntrySize))
	if _, err := r.ReadAt(array, int64(h.EntriesLBA)*sectorSize); err != nil {
		return nil, fmt.Errorf("reading the GPT entries (LBA %d): %w", h.EntriesLBA, err)
	}
	if got := gpt.ArrayCRC(array); got != h.EntriesCRC {
		return nil, fmt.Errorf("GPT entries: crc %08x, want %08x", got, h.EntriesCRC)
	}
	var out []partition
	for i := range int(h.NumEntries) {
		e := gpt.DecodeEntry(array[i*int(h.EntrySize):])
		if !e.Used() {
			continue
		}
		if e.LastLBA < e.FirstLBA {
			return nil, fmt.Errorf("GPT entry %d (%s) ends at LBA %d before it starts at %d", i+1, e.Name, e.LastLBA, e.FirstLBA)
		}
		out = append(out, partition{Name: e.Name.String(), Start: int64(e.FirstLBA) * sectorSize,
			Size: int64(e.LastLBA-e.FirstLBA+1) * sectorSize})
	}
	if len(out) == 0 {
		return nil, errors.New("GPT: no partitions")
	}
	slices.SortFunc(out, func(a, b partition) int { return int(a.Start - b.Start) })
	return out, nil
}

// outside names the blocks of no partition (the GPT's own, gaps).
const outside = "(GPT, outside partitions)"

// area is where the blocks of one partition (or of none) changed between two disks.
type area struct {
	Name string `json:"name"`
	// Blocks of the disk in the area (a block across a boundary counts in the area where it
	// starts).
	Blocks int64 `json:"blocks"`
	// Data blocks (not zeros) of the new disk in the area; Changed the blocks whose contents
	// differ from the old disk's.
	Data    int64 `json:"data"`
	Changed int64 `json:"changed"`
	// FirstChanged is the offset in bytes of the first changed block from the area's start
	// (-1: none). TailFrom is where the area's last run of changed data blocks starts (-1: the
	// last data block did not change), TailData the data blocks from there on, every one of
	// them changed: a long tail is contents shifted, not edited in place.
	FirstChanged int64 `json:"first_changed"`
	TailFrom     int64 `json:"tail_from"`
	TailData     int64 `json:"tail_data"`
}

// changes compares the block hashes of an old and a new disk (equal block size and count) and
// says where blocks changed, by partition. A block changed when its contents differ,
// zeros included (a block that became zeros must be written too).
func changes(old, cur *publication.Hashes, parts []partition) ([]area, error) {
	if old.BlockSize != cur.BlockSize || old.Blocks != cur.Blocks {
		return nil, fmt.Errorf("disks differ in geometry: %d blocks of %d bytes against %d of %d",
			old.Blocks, old.BlockSize, cur.Blocks, cur.BlockSize)
	}
	bs := cur.BlockSize
	areas := make([]area, len(parts)+1)
	for i, p := range parts {
		areas[i] = area{Name: p.Name, FirstChanged: -1, TailFrom: -1}
	}
	areas[len(parts)] = area{Name: outside, FirstChanged: -1, TailFrom: -1}
	where := func(i int64) (int, int64) { // area index and the area's start
		off := i * bs
		for k, p := range parts {
			if off >= p.Start && off < p.Start+p.Size {
				return k, p.Start
			}
		}
		return len(parts), 0
	}
	for i := range cur.Blocks {
		k, start := where(i)
		a := &areas[k]
		a.Blocks++
		_, data := cur.Get(i)
		changed := !old.Same(cur, i)
		off := max(i*bs-start, 0)
		if changed {
			a.Changed++
			if a.FirstChanged < 0 {
				a.FirstChanged = off
			}
		}
		if !data {
			continue
		}
		a.Data++
		switch {
		case !changed:
			a.TailFrom, a.TailData = -1, 0
		case a.TailFrom < 0:
			a.TailFrom, a.TailData = off, 1
		default:
			a.TailData++
		}
	}
	return areas, nil
}
