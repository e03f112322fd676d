package gpt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"testing"
	"unicode/utf16"

	bootgpt "github.com/imgctl/imgctl/images/boot/gpt"
	"github.com/imgctl/imgctl/layers/testenv"
)

// memDisk is a disk in memory that records every access outside it.
type memDisk struct {
	b       []byte
	maxRead int    // largest buffer passed to ReadAt
	bad     string // first write outside the disk
}

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	d.maxRead = max(d.maxRead, len(p))
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= int64(len(d.b)) {
		return 0, io.EOF
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(d.b)) {
		if d.bad == "" {
			d.bad = fmt.Sprintf("write of %d bytes at %d on a disk of %d", len(p), off, len(d.b))
		}
		return 0, io.ErrShortWrite
	}
	return copy(d.b[off:], p), nil
}

type part struct {
	first, last uint64
	name        string
}

// makeGPT writes a GPT disk of sectors sectors: protective MBR, primary and backup headers and
// entry arrays of entries entries of 128 bytes, the given partitions.
func makeGPT(ss int, sectors uint64, entries uint32, parts ...part) []byte {
	le := binary.LittleEndian
	disk := make([]byte, uint64(ss)*sectors)
	mbr := disk[446:]
	mbr[4] = bootgpt.ProtectiveType
	le.PutUint32(mbr[8:], 1)
	le.PutUint32(mbr[12:], uint32(min(sectors-1, 0xffffffff)))
	disk[510], disk[511] = 0x55, 0xaa
	ents := make([]byte, int(entries)*128)
	for i, p := range parts {
		e := ents[i*128:]
		copy(e[0:16], "\xaf\x3d\xc6\x0f\x83\x84\x72\x47\x8e\x79\x3d\x69\xd8\x47\x7d\xe4") // Linux data
		e[16] = byte(i + 1)
		le.PutUint64(e[32:], p.first)
		le.PutUint64(e[40:], p.last)
		for j, c := range utf16.Encode([]rune(p.name)) {
			le.PutUint16(e[56+2*j:], c)
		}
	}
	entSectors := (uint64(len(ents)) + uint64(ss) - 1) / uint64(ss)
	last := sectors - 1
	hdr := func(my, alt, entLBA uint64) []byte {
		h := make([]byte, ss)
		copy(h, bootgpt.Signature)
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], bootgpt.HeaderSize)
		le.PutUint64(h[24:], my)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], 2+entSectors)
		le.PutUint64(h[48:], last-1-entSectors)
		copy(h[56:72], "imgctl-fuzz-disk")
		le.PutUint64(h[72:], entLBA)
		le.PutUint32(h[80:], entries)
		le.PutUint32(h[84:], 128)
		le.PutUint32(h[88:], crc32.ChecksumIEEE(ents))
		le.PutUint32(h[16:], bootgpt.HeaderCRC(h[:bootgpt.HeaderSize]))
		return h
	}
	copy(disk[ss:], hdr(1, last, 2))
	copy(disk[2*ss:], ents)
	copy(disk[(last-entSectors)*uint64(ss):], ents)
	copy(disk[last*uint64(ss):], hdr(last, 1, last-entSectors))
	return disk
}

// fixCRCs recomputes the primary header's checksums, so that mutations of its fields and of the
// entry array get past them.
func fixCRCs(disk []byte, ss int) {
	le := binary.LittleEndian
	if len(disk) < 2*ss || string(disk[ss:ss+8]) != bootgpt.Signature {
		return
	}
	h := disk[ss : 2*ss]
	entLBA, n, size := le.Uint64(h[72:]), uint64(le.Uint32(h[80:])), uint64(le.Uint32(h[84:]))
	if off := entLBA * uint64(ss); entLBA < uint64(len(disk)) && off+n*size <= uint64(len(disk)) {
		le.PutUint32(h[88:], crc32.ChecksumIEEE(disk[off:off+n*size]))
	}
	if hs := le.Uint32(h[12:]); hs >= bootgpt.HeaderSize && int(hs) <= ss {
		le.PutUint32(h[16:], bootgpt.HeaderCRC(h[:hs]))
	}
}

func sectorSize(big bool) int {
	if big {
		return 4096
	}
	return 512
}

func addSeeds(f *testing.F) {
	f.Add(makeGPT(512, 48, 4, part{6, 13, "ESP"}, part{14, 40, "STATE"}), true, false, uint8(2))
	f.Add(makeGPT(512, 64, 8, part{7, 20, "ROOT-A"}, part{21, 30, "ROOT-B"}, part{31, 40, "STATE"}), false, false, uint8(3))
	f.Add(makeGPT(4096, 12, 4, part{3, 9, "STATE"}), true, true, uint8(1))
	f.Add(makeGPT(512, 48, 4, part{6, 13, "ESP"}, part{14, 20, "STATE"}), true, false, uint8(1))
	f.Add(make([]byte, 1024), false, false, uint8(0))
}

// readAlloc bounds what Read may allocate for a disk of n bytes: its header sector, and the
// entry array no larger than the disk — never what the header claims. testenv.Allocated may
// count up to some hundred KiB of earlier small allocations: hence the constant.
func readAlloc(n int) uint64 { return 4<<20 + 4*uint64(n) }

func readTable(t *testing.T, d *memDisk, ss int) (*Table, error) {
	t.Helper()
	var tab *Table
	var err error
	testenv.MaxAlloc(t, readAlloc(len(d.b)), "Read", func() { tab, err = Read(d, ss) })
	if d.maxRead > max(ss, 2*len(d.b)) {
		t.Fatalf("Read passed a %d-byte buffer to ReadAt on a %d-byte disk", d.maxRead, len(d.b))
	}
	return tab, err
}

// checkTable: every partition lies inside the usable area, which lies after the primary entry
// array.
func checkTable(t *testing.T, tab *Table) {
	t.Helper()
	for _, p := range tab.Partitions {
		if p.FirstLBA < tab.FirstUsableLBA || p.FirstLBA > p.LastLBA || p.LastLBA > tab.LastUsableLBA {
			t.Fatalf("partition %d spans %d..%d, outside the usable %d..%d", p.Number, p.FirstLBA, p.LastLBA, tab.FirstUsableLBA, tab.LastUsableLBA)
		}
		if p.Number < 1 || p.Number > int(tab.hdr.NumEntries) {
			t.Fatalf("partition number %d of %d entries", p.Number, tab.hdr.NumEntries)
		}
	}
	ss := uint64(tab.SectorSize)
	if end := tab.hdr.EntriesLBA + (uint64(len(tab.entries))+ss-1)/ss; tab.hdr.EntriesLBA < 2 || end > tab.FirstUsableLBA {
		t.Fatalf("entry array at %d..%d overlaps the headers or the usable area from %d", tab.hdr.EntriesLBA, end, tab.FirstUsableLBA)
	}
}

// TestReadBoundsMemory: a 1 KiB disk whose header claims 65536 entries of 4 KiB must not make
// Read allocate 256 MiB.
func TestReadBoundsMemory(t *testing.T) {
	disk := makeGPT(512, 2, 4)[:1024]
	binary.LittleEndian.PutUint32(disk[512+80:], maxEntries)
	binary.LittleEndian.PutUint32(disk[512+84:], maxEntrySize)
	fixCRCs(disk, 512)
	if _, err := readTable(t, &memDisk{b: disk}, 512); err == nil {
		t.Fatal("Read accepted an entry array beyond the disk")
	}
}

// TestReadRejectsPartitionOutsideUsable: Grow extended such a partition's end to before its start.
func TestReadRejectsPartitionOutsideUsable(t *testing.T) {
	for _, p := range []part{{30, 20, "backwards"}, {2, 20, "over the entries"}, {20, 60, "past the end"}} {
		disk := makeGPT(512, 48, 4, p)
		if _, err := Read(&memDisk{b: disk}, 512); err == nil {
			t.Errorf("Read accepted partition %q at %d..%d of a 48-sector disk", p.name, p.first, p.last)
		}
	}
}

// TestReadRejectsMisplacedEntries: Grow rewrites the primary entry array where the header says
// it is; inside the usable area that overwrote a partition.
func TestReadRejectsMisplacedEntries(t *testing.T) {
	disk := makeGPT(512, 48, 4, part{14, 20, "STATE"})
	copy(disk[30*512:], disk[2*512:3*512])
	binary.LittleEndian.PutUint64(disk[512+72:], 30)
	fixCRCs(disk, 512)
	if _, err := Read(&memDisk{b: disk}, 512); err == nil {
		t.Error("Read accepted an entry array inside the usable area")
	}
}

// FuzzRead: Read never reads or allocates more than the disk holds, and what it returns is a
// consistent table. fix recomputes the checksums so mutations get past them.
func FuzzRead(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, disk []byte, fix, big bool, _ uint8) {
		ss := sectorSize(big)
		disk = bytes.Clone(disk) // the fuzzer's input must stay as it was
		if fix {
			fixCRCs(disk, ss)
		}
		tab, err := readTable(t, &memDisk{b: disk}, ss)
		if err != nil {
			if tab != nil {
				t.Fatal("Read returned a table and an error")
			}
			return
		}
		checkTable(t, tab)
	})
}

// FuzzGrow: Grow never writes outside the disk; when it changes the table, the primary and
// backup tables read back with the partition ending at the last usable sector and nothing else
// changed, and a second Grow changes nothing; when it changes nothing, it writes nothing.
func FuzzGrow(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, disk []byte, fix, big bool, number uint8) {
		ss := sectorSize(big)
		disk = bytes.Clone(disk) // the fuzzer's input must stay as it was
		if fix {
			fixCRCs(disk, ss)
		}
		d := &memDisk{b: disk}
		before, err := Read(d, ss)
		if err != nil {
			return
		}
		orig := bytes.Clone(disk)
		res, err := Grow(d, ss, int64(len(disk)), int(number))
		if d.bad != "" {
			t.Fatalf("Grow: %s", d.bad)
		}
		if err != nil {
			return
		}
		if !res.Changed() {
			// Nothing to do: nothing written (a corrupt backup is left as it is).
			if !bytes.Equal(orig, disk) {
				t.Fatal("Grow reported no change but wrote to the disk")
			}
			return
		}
		after, err := Read(d, ss)
		if err != nil {
			t.Fatalf("table unreadable after Grow: %v", err)
		}
		checkTable(t, after)
		if len(after.Partitions) != len(before.Partitions) {
			t.Fatalf("Grow changed the number of partitions: %d -> %d", len(before.Partitions), len(after.Partitions))
		}
		for i, p := range after.Partitions {
			want := before.Partitions[i]
			if p.Number == int(number) {
				want.LastLBA = after.LastUsableLBA
			}
			if p != want {
				t.Fatalf("partition %d after Grow = %+v, want %+v", p.Number, p, want)
			}
		}
		if res.Partition.LastLBA != after.LastUsableLBA || after.AlternateLBA != uint64(len(disk)/ss)-1 {
			t.Fatalf("Grow result %+v, table after: last usable %d, backup at %d", res, after.LastUsableLBA, after.AlternateLBA)
		}
		// The backup header: valid, pointing back at the primary, with the same entries.
		b := disk[after.AlternateLBA*uint64(ss):][:ss]
		le := binary.LittleEndian
		if string(b[:8]) != bootgpt.Signature || le.Uint32(b[16:]) != bootgpt.HeaderCRC(b[:le.Uint32(b[12:])]) || le.Uint64(b[32:]) != 1 {
			t.Fatal("backup header invalid after Grow")
		}
		be := le.Uint64(b[72:]) * uint64(ss)
		if !bytes.Equal(disk[be:be+uint64(len(after.entries))], after.entries) {
			t.Fatal("backup entry array differs from the primary after Grow")
		}
		res2, err := Grow(d, ss, int64(len(disk)), int(number))
		if err != nil || res2.Changed() {
			t.Fatalf("second Grow: changed %v, %v", res2.Changed(), err)
		}
	})
}

// TestGrowBySectors (found by FuzzGrow): a disk enlarged by fewer sectors than the entry array
// has its old backup header inside the new backup entry array, and wiping the old header
// zeroed part of the new backup entries.
func TestGrowBySectors(t *testing.T) {
	for _, grow := range []uint64{1, 2, 4, 5} {
		// 512-byte sectors, 16 entries: the array takes 4 sectors.
		disk := makeGPT(512, 48, 16, part{6 + 3, 20, "ESP"}, part{21, 30, "STATE"})
		disk = append(disk, make([]byte, grow*512)...)
		d := &memDisk{b: disk}
		res, err := Grow(d, 512, int64(len(disk)), 2)
		if err != nil || !res.Grown || !res.MovedBackup {
			t.Fatalf("grow by %d: %+v, %v", grow, res, err)
		}
		tab, err := Read(d, 512)
		if err != nil {
			t.Fatal(err)
		}
		b := disk[tab.AlternateLBA*512:][:512]
		be := binary.LittleEndian.Uint64(b[72:]) * 512
		if !bytes.Equal(disk[be:be+uint64(len(tab.entries))], tab.entries) {
			t.Errorf("grow by %d sectors: the backup entry array differs from the primary", grow)
		}
	}
}
