// Package gpt reads a GUID partition table and grows its last partition to the end of the disk,
// through the one GPT codec the builders write it with (images/boot/gpt).
package gpt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"

	bootgpt "github.com/imgctl/imgctl/images/boot/gpt"
)

// Device is what Read and Grow need: a disk image file or an opened block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// ErrNoGPT is returned when the primary header is missing or corrupt.
var ErrNoGPT = errors.New("no valid primary GPT header")

// Limits of what Read accepts, far beyond any real table: they bound what a corrupt header
// can make it read.
const (
	maxEntries   = 1 << 16
	maxEntrySize = 4096
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

	header  []byte         // primary header sector, as read
	hdr     bootgpt.Header // decoded
	entries []byte         // raw entry array
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
	h, err := bootgpt.DecodeHeader(hdr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoGPT, err)
	}
	t := &Table{
		SectorSize:     sectorSize,
		AlternateLBA:   h.AlternateLBA,
		FirstUsableLBA: h.FirstUsableLBA,
		LastUsableLBA:  h.LastUsableLBA,
		DiskGUID:       h.DiskGUID.String(),
		header:         hdr,
		hdr:            h,
	}
	if h.NumEntries == 0 || h.NumEntries > maxEntries || h.EntrySize < bootgpt.EntrySize || h.EntrySize > maxEntrySize || h.EntrySize%8 != 0 {
		return nil, fmt.Errorf("%w: %d entries of %d bytes", ErrNoGPT, h.NumEntries, h.EntrySize)
	}
	// The entry array lies between the primary header and the first usable sector (UEFI 5.3.2):
	// Grow rewrites it in place, which must not touch a header or a partition.
	ss := uint64(sectorSize)
	entBytes := uint64(h.NumEntries) * uint64(h.EntrySize)
	entSectors := bootgpt.ArraySectors(sectorSize, h.NumEntries, h.EntrySize)
	if t.FirstUsableLBA > t.LastUsableLBA || t.LastUsableLBA > math.MaxInt64/ss ||
		h.EntriesLBA < bootgpt.PrimaryEntriesLBA || t.FirstUsableLBA < entSectors || h.EntriesLBA > t.FirstUsableLBA-entSectors {
		return nil, fmt.Errorf("%w: entry array at sector %d (%d sectors) and usable sectors %d..%d overlap",
			ErrNoGPT, h.EntriesLBA, entSectors, t.FirstUsableLBA, t.LastUsableLBA)
	}
	// Read through a section so the buffer grows with what the disk holds, not with what a
	// corrupt header claims (up to 256 MiB).
	entries, err := io.ReadAll(io.NewSectionReader(dev, int64(h.EntriesLBA*ss), int64(entBytes)))
	if err == nil && uint64(len(entries)) != entBytes {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, fmt.Errorf("gpt: read entries: %w", err)
	}
	t.entries = entries
	if got, want := bootgpt.ArrayCRC(t.entries), h.EntriesCRC; got != want {
		return nil, fmt.Errorf("%w: entry array crc %08x, want %08x", ErrNoGPT, got, want)
	}
	for i := 0; i < int(h.NumEntries); i++ {
		e := bootgpt.DecodeEntry(t.entries[i*int(h.EntrySize):])
		if !e.Used() {
			continue
		}
		p := Partition{
			Number:   i + 1,
			TypeGUID: e.Type.String(),
			GUID:     e.GUID.String(),
			FirstLBA: e.FirstLBA,
			LastLBA:  e.LastLBA,
			Name:     e.Name.String(),
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
	entSectors := bootgpt.ArraySectors(sectorSize, t.hdr.NumEntries, t.hdr.EntrySize)
	geo, err := bootgpt.NewGeometry(sectors, entSectors)
	if err != nil {
		return GrowResult{}, fmt.Errorf("gpt: %w", err)
	}
	lastLBA, backupEntLBA, lastUsable := geo.BackupLBA, geo.BackupEntriesLBA, geo.LastUsableLBA
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

	entry := t.entries[(number-1)*int(t.hdr.EntrySize):]
	e := bootgpt.DecodeEntry(entry)
	e.LastLBA = lastUsable
	e.Put(entry)

	ph := t.hdr
	ph.MyLBA, ph.AlternateLBA = 1, lastLBA
	ph.LastUsableLBA = lastUsable
	ph.EntriesCRC = bootgpt.ArrayCRC(t.entries)
	primary, backup := bytes.Clone(t.header), bytes.Clone(t.header)
	if err := ph.Put(primary); err != nil {
		return res, fmt.Errorf("gpt: %w", err)
	}
	if err := ph.Backup(backupEntLBA).Put(backup); err != nil {
		return res, fmt.Errorf("gpt: %w", err)
	}

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
	if _, err := dev.WriteAt(t.entries, int64(t.hdr.EntriesLBA*ss)); err != nil {
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
	mbr := make([]byte, bootgpt.MBRSize)
	if _, err := dev.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("gpt: read mbr: %w", err)
	}
	if !bootgpt.FixProtectiveMBR(mbr, sectors) {
		return nil
	}
	if _, err := dev.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("gpt: write mbr: %w", err)
	}
	return nil
}
