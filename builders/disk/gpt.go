package disk

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"

	"github.com/imgctl/imgctl/images/boot/gpt"
)

// sectorSize is the logical sector size of the disks imgctl writes.
const sectorSize = 512

// guidNamespace is the RFC 4122 name-space UUID under which imgctl derives disk identities.
var guidNamespace = [16]byte{0x48, 0xfe, 0xf4, 0xae, 0x55, 0xb7, 0x4a, 0xc6, 0xbd, 0xaa, 0x27, 0x9f, 0x22, 0xb9, 0x9f, 0x93}

// deriveGUID returns a version-5 style UUID (SHA-1 over the name space, the seed and a
// label) in canonical byte order. The seed is length-prefixed so seed and label never blur.
func deriveGUID(seed []byte, label string) gpt.GUID {
	h := sha1.New()
	h.Write(guidNamespace[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(seed)))
	h.Write(n[:])
	h.Write(seed)
	h.Write([]byte(label))
	var u gpt.GUID
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return u
}

// gptRegion is a run of bytes to place at an absolute disk offset.
type gptRegion struct {
	off  int64
	data []byte
}

// buildGPT encodes the protective MBR, the primary GPT (LBA 1..33) and the backup GPT (last
// 33 sectors) through the one GPT codec the node agent reads them with. The entry arrays are
// returned in full; the writer skips their zero sectors.
func buildGPT(l Layout) ([]gptRegion, error) {
	if l.DiskSize%sectorSize != 0 {
		return nil, fmt.Errorf("disk size %d is not a multiple of %d", l.DiskSize, sectorSize)
	}
	if len(l.Partitions) > gpt.DefaultEntries {
		return nil, fmt.Errorf("%d partitions: a GPT holds at most %d", len(l.Partitions), gpt.DefaultEntries)
	}
	totalLBA := uint64(l.DiskSize / sectorSize)
	geo, err := gpt.NewGeometry(totalLBA, gpt.ArraySectors(sectorSize, gpt.DefaultEntries, gpt.EntrySize))
	if err != nil {
		return nil, err
	}
	diskGUID, err := gpt.ParseGUID(l.DiskGUID)
	if err != nil {
		return nil, fmt.Errorf("disk GUID: %w", err)
	}

	array := make([]byte, gpt.DefaultEntries*gpt.EntrySize)
	for _, p := range l.Partitions {
		if p.Index < 1 || p.Index > gpt.DefaultEntries {
			return nil, fmt.Errorf("partition %s: index %d out of 1..%d", p.Name, p.Index, gpt.DefaultEntries)
		}
		e := array[(p.Index-1)*gpt.EntrySize : p.Index*gpt.EntrySize]
		if gpt.DecodeEntry(e).Used() {
			return nil, fmt.Errorf("partition %s: index %d used twice", p.Name, p.Index)
		}
		typ, err := gpt.ParseGUID(p.Type)
		if err != nil {
			return nil, fmt.Errorf("partition %s type: %w", p.Name, err)
		}
		uniq, err := gpt.ParseGUID(p.GUID)
		if err != nil {
			return nil, fmt.Errorf("partition %s: %w", p.Name, err)
		}
		if p.Start%sectorSize != 0 || p.Size%sectorSize != 0 || p.Size <= 0 {
			return nil, fmt.Errorf("partition %s: start %d and size %d must be positive multiples of %d", p.Name, p.Start, p.Size, sectorSize)
		}
		first := uint64(p.Start / sectorSize)
		last := first + uint64(p.Size/sectorSize) - 1
		if first < geo.FirstUsableLBA || last > geo.LastUsableLBA {
			return nil, fmt.Errorf("partition %s: sectors %d..%d outside the usable %d..%d", p.Name, first, last, geo.FirstUsableLBA, geo.LastUsableLBA)
		}
		name, err := gpt.NewName(p.Name)
		if err != nil {
			return nil, err
		}
		// Attributes: none (no legacy BIOS bootable).
		gpt.Entry{Type: typ, GUID: uniq, FirstLBA: first, LastLBA: last, Name: name}.Put(e)
	}
	if err := checkOverlap(l.Partitions); err != nil {
		return nil, err
	}

	primary := gpt.Header{
		Revision:       gpt.Revision,
		Size:           gpt.HeaderSize,
		MyLBA:          1,
		AlternateLBA:   geo.BackupLBA,
		FirstUsableLBA: geo.FirstUsableLBA,
		LastUsableLBA:  geo.LastUsableLBA,
		DiskGUID:       diskGUID,
		EntriesLBA:     gpt.PrimaryEntriesLBA,
		NumEntries:     gpt.DefaultEntries,
		EntrySize:      gpt.EntrySize,
		EntriesCRC:     gpt.ArrayCRC(array),
	}
	primarySector := make([]byte, sectorSize)
	backupSector := make([]byte, sectorSize)
	if err := primary.Put(primarySector); err != nil {
		return nil, err
	}
	if err := primary.Backup(geo.BackupEntriesLBA).Put(backupSector); err != nil {
		return nil, err
	}
	return []gptRegion{
		{0, gpt.ProtectiveMBR(totalLBA)},
		{1 * sectorSize, primarySector},
		{gpt.PrimaryEntriesLBA * sectorSize, array},
		{int64(geo.BackupEntriesLBA) * sectorSize, array},
		{int64(geo.BackupLBA) * sectorSize, backupSector},
	}, nil
}

func checkOverlap(ps []Partition) error {
	for i, a := range ps {
		for _, b := range ps[i+1:] {
			if a.Start < b.Start+b.Size && b.Start < a.Start+a.Size {
				return fmt.Errorf("partitions %s and %s overlap", a.Name, b.Name)
			}
		}
	}
	return nil
}
