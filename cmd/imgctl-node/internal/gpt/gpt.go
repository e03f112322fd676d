// Package gpt reads a GUID partition table and grows its last partition to the end of the disk.
package gpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"unicode/utf16"
)

// Device is what Read and Grow need: a disk image file or an opened block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// ErrNoGPT is returned when the primary header is missing or corrupt.
var ErrNoGPT = errors.New("no valid primary GPT header")

const (
	signature      = "EFI PART"
	minHeaderSize  = 92
	maxEntries     = 1 << 16
	maxEntrySize   = 4096
	protectiveType = 0xEE
)

// Partition is one used entry of the table.
type Partition struct {
	Number   int    // 1-based index in the entry array, as the kernel numbers partitions
	TypeGUID string // canonical lower-case form
	GUID     string // unique partition GUID (PARTUUID), canonical lower-case form
	Name     string // PARTLABEL
	FirstLBA uint64
	LastLBA  uint64 // inclusive
}

// Table is a parsed GPT.
type Table struct {
	SectorSize     int
	DiskGUID       string
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	AlternateLBA   uint64 // where the backup header is
	Partitions     []Partition

	header  []byte // primary header sector
	entries []byte // raw entry array
	entLBA  uint64
	entNum  uint32
	entSize uint32
}

// Read parses the primary GPT of dev. sectorSize is the logical sector size (512 or 4096).
func Read(dev Device, sectorSize int) (*Table, error) {
	if sectorSize < 512 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("gpt: bad sector size %d", sectorSize)
	}
	hdr := make([]byte, sectorSize)
	if _, err := dev.ReadAt(hdr, int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("gpt: read primary header: %w", err)
	}
	if string(hdr[:8]) != signature {
		return nil, ErrNoGPT
	}
	le := binary.LittleEndian
	hsize := le.Uint32(hdr[12:])
	if hsize < minHeaderSize || int(hsize) > sectorSize {
		return nil, fmt.Errorf("%w: header size %d", ErrNoGPT, hsize)
	}
	if got, want := headerCRC(hdr[:hsize]), le.Uint32(hdr[16:]); got != want {
		return nil, fmt.Errorf("%w: header crc %08x, want %08x", ErrNoGPT, got, want)
	}
	t := &Table{
		SectorSize:     sectorSize,
		AlternateLBA:   le.Uint64(hdr[32:]),
		FirstUsableLBA: le.Uint64(hdr[40:]),
		LastUsableLBA:  le.Uint64(hdr[48:]),
		DiskGUID:       guidString(hdr[56:72]),
		header:         hdr,
		entLBA:         le.Uint64(hdr[72:]),
		entNum:         le.Uint32(hdr[80:]),
		entSize:        le.Uint32(hdr[84:]),
	}
	if t.entNum == 0 || t.entNum > maxEntries || t.entSize < 128 || t.entSize > maxEntrySize || t.entSize%8 != 0 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes", ErrNoGPT, t.entNum, t.entSize)
	}
	// The entry array lies between the primary header and the first usable sector (UEFI 5.3.2):
	// Grow rewrites it in place, which must not touch a header or a partition.
	ss := uint64(sectorSize)
	entBytes := uint64(t.entNum) * uint64(t.entSize)
	entSectors := (entBytes + ss - 1) / ss
	if t.FirstUsableLBA > t.LastUsableLBA || t.LastUsableLBA > math.MaxInt64/ss ||
		t.entLBA < 2 || t.FirstUsableLBA < entSectors || t.entLBA > t.FirstUsableLBA-entSectors {
		return nil, fmt.Errorf("%w: entry array at sector %d (%d sectors) and usable sectors %d..%d overlap",
			ErrNoGPT, t.entLBA, entSectors, t.FirstUsableLBA, t.LastUsableLBA)
	}
	// Read through a section so the buffer grows with what the disk holds, not with what a
	// corrupt header claims (up to 256 MiB).
	entries, err := io.ReadAll(io.NewSectionReader(dev, int64(t.entLBA*ss), int64(entBytes)))
	if err == nil && uint64(len(entries)) != entBytes {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("gpt: read entries: %w", err)
	}
	t.entries = entries
	if got, want := crc32.ChecksumIEEE(t.entries), le.Uint32(hdr[88:]); got != want {
		return nil, fmt.Errorf("%w: entry array crc %08x, want %08x", ErrNoGPT, got, want)
	}
	for i := 0; i < int(t.entNum); i++ {
		e := t.entries[i*int(t.entSize):]
		if isZero(e[:16]) {
			continue
		}
		p := Partition{
			Number:   i + 1,
			TypeGUID: guidString(e[0:16]),
			GUID:     guidString(e[16:32]),
			FirstLBA: le.Uint64(e[32:]),
			LastLBA:  le.Uint64(e[40:]),
			Name:     utf16Name(e[56:128]),
		}
		if p.FirstLBA < t.FirstUsableLBA || p.FirstLBA > p.LastLBA || p.LastLBA > t.LastUsableLBA {
			return nil, fmt.Errorf("%w: partition %d (%q) spans sectors %d..%d, outside the usable %d..%d",
				ErrNoGPT, p.Number, p.Name, p.FirstLBA, p.LastLBA, t.FirstUsableLBA, t.LastUsableLBA)
		}
		t.Partitions = append(t.Partitions, p)
	}
	return t, nil
}

// GrowResult says what Grow changed.
type GrowResult struct {
	Partition    Partition // the grown partition, with its new end
	OldLastLBA   uint64
	MovedBackup  bool // the backup header/array moved to the real end of the disk
	Grown        bool // the partition's end moved
	DiskSectors  uint64
	NewBackupLBA uint64
}

// Changed reports whether Grow wrote anything.
func (r GrowResult) Changed() bool { return r.Grown || r.MovedBackup }

// Grow moves the backup GPT to the end of a disk of diskSize bytes (the disk may have been
// enlarged since the table was written) and extends partition number to the last usable sector.
// The partition must be the last one on the disk. Grow is idempotent.
func Grow(dev Device, sectorSize int, diskSize int64, number int) (GrowResult, error) {
	t, err := Read(dev, sectorSize)
	if err != nil {
		return GrowResult{}, err
	}
	ss := uint64(sectorSize)
	sectors := uint64(diskSize) / ss
	entBytes := uint64(t.entNum) * uint64(t.entSize)
	entSectors := (entBytes + ss - 1) / ss
	if sectors < 2+2*entSectors+2 {
		return GrowResult{}, fmt.Errorf("gpt: disk of %d sectors is too small", sectors)
	}
	lastLBA := sectors - 1
	backupEntLBA := lastLBA - entSectors
	lastUsable := backupEntLBA - 1
	if lastUsable < t.LastUsableLBA {
		return GrowResult{}, fmt.Errorf("gpt: disk shrank: last usable sector %d < %d in the table", lastUsable, t.LastUsableLBA)
	}
	var target *Partition
	for i := range t.Partitions {
		if t.Partitions[i].Number == number {
			target = &t.Partitions[i]
		}
	}
	if target == nil {
		return GrowResult{}, fmt.Errorf("gpt: no partition %d", number)
	}
	for _, p := range t.Partitions {
		if p.Number != number && p.LastLBA >= target.FirstLBA {
			return GrowResult{}, fmt.Errorf("gpt: partition %d (%q) is not the last one: %d (%q) ends at sector %d", number, target.Name, p.Number, p.Name, p.LastLBA)
		}
	}
	res := GrowResult{OldLastLBA: target.LastLBA, DiskSectors: sectors, NewBackupLBA: lastLBA}
	if target.LastLBA > lastUsable {
		return GrowResult{}, fmt.Errorf("gpt: partition %d ends at %d, past the last usable sector %d", number, target.LastLBA, lastUsable)
	}
	oldAlternate := t.AlternateLBA
	res.MovedBackup = oldAlternate != lastLBA || t.LastUsableLBA != lastUsable
	res.Grown = target.LastLBA != lastUsable
	target.LastLBA = lastUsable
	res.Partition = *target
	if !res.Changed() {
		return res, nil
	}

	le := binary.LittleEndian
	binary.LittleEndian.PutUint64(t.entries[(number-1)*int(t.entSize)+40:], lastUsable)
	entCRC := crc32.ChecksumIEEE(t.entries)
	hsize := le.Uint32(t.header[12:])

	primary := bytes.Clone(t.header)
	le.PutUint64(primary[24:], 1)
	le.PutUint64(primary[32:], lastLBA)
	le.PutUint64(primary[48:], lastUsable)
	le.PutUint32(primary[88:], entCRC)
	le.PutUint32(primary[16:], headerCRC(primary[:hsize]))

	backup := bytes.Clone(t.header)
	le.PutUint64(backup[24:], lastLBA)
	le.PutUint64(backup[32:], 1)
	le.PutUint64(backup[48:], lastUsable)
	le.PutUint64(backup[72:], backupEntLBA)
	le.PutUint32(backup[88:], entCRC)
	le.PutUint32(backup[16:], headerCRC(backup[:hsize]))

	// Backup first: until the primary is rewritten, the old primary (and its old backup) still
	// describe a consistent table.
	padded := make([]byte, entSectors*ss)
	copy(padded, t.entries)
	if _, err := dev.WriteAt(padded, int64(backupEntLBA*ss)); err != nil {
		return res, fmt.Errorf("gpt: write backup entries: %w", err)
	}
	if _, err := dev.WriteAt(backup, int64(lastLBA*ss)); err != nil {
		return res, fmt.Errorf("gpt: write backup header: %w", err)
	}
	if _, err := dev.WriteAt(t.entries, int64(t.entLBA*ss)); err != nil {
		return res, fmt.Errorf("gpt: write primary entries: %w", err)
	}
	if _, err := dev.WriteAt(primary, int64(ss)); err != nil {
		return res, fmt.Errorf("gpt: write primary header: %w", err)
	}
	// The old backup header now lies inside the grown partition: wipe it so nothing mistakes it
	// for a table. On a disk grown by fewer sectors than the entry array it lies inside the new
	// backup entry array instead, already overwritten.
	if oldAlternate != lastLBA && oldAlternate > 1 && oldAlternate < backupEntLBA {
		if _, err := dev.WriteAt(make([]byte, ss), int64(oldAlternate*ss)); err != nil {
			return res, fmt.Errorf("gpt: wipe old backup header: %w", err)
		}
	}
	if err := fixProtectiveMBR(dev, sectors); err != nil {
		return res, err
	}
	return res, nil
}

// fixProtectiveMBR makes a protective MBR entry cover the whole (grown) disk.
func fixProtectiveMBR(dev Device, sectors uint64) error {
	mbr := make([]byte, 512)
	if _, err := dev.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("gpt: read mbr: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil
	}
	size := sectors - 1
	if size > 0xFFFFFFFF {
		size = 0xFFFFFFFF
	}
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		if e[4] != protectiveType || binary.LittleEndian.Uint32(e[8:]) != 1 {
			continue
		}
		if binary.LittleEndian.Uint32(e[12:]) == uint32(size) {
			return nil
		}
		binary.LittleEndian.PutUint32(e[12:], uint32(size))
		if _, err := dev.WriteAt(mbr, 0); err != nil {
			return fmt.Errorf("gpt: write mbr: %w", err)
		}
		return nil
	}
	return nil
}

func headerCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	clear(c[16:20])
	return crc32.ChecksumIEEE(c)
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// guidString formats a GPT mixed-endian GUID.
func guidString(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
