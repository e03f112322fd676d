package disk

import (
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

const (
	sectorSize = 512
	// gptEntries is the number of partition entries in the GPT array (the customary 128 of
	// 128 bytes: 32 sectors), so the first usable LBA is 34.
	gptEntries    = 128
	gptEntrySize  = 128
	gptArrayBytes = gptEntries * gptEntrySize
)

// guidNamespace is the RFC 4122 name-space UUID under which imgctl derives disk identities.
var guidNamespace = [16]byte{0x48, 0xfe, 0xf4, 0xae, 0x55, 0xb7, 0x4a, 0xc6, 0xbd, 0xaa, 0x27, 0x9f, 0x22, 0xb9, 0x9f, 0x93}

// deriveGUID returns a version-5 style UUID (SHA-1 over the name space, the seed and a
// label) in canonical byte order. The seed is length-prefixed so seed and label never blur.
func deriveGUID(seed []byte, label string) [16]byte {
	h := sha1.New()
	h.Write(guidNamespace[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(seed)))
	h.Write(n[:])
	h.Write(seed)
	h.Write([]byte(label))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return u
}

func formatGUID(u [16]byte) string {
	s := hex.EncodeToString(u[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// parseGUID reads a canonical (8-4-4-4-12, any case) GUID into canonical byte order.
func parseGUID(s string) ([16]byte, error) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("malformed GUID %q", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return u, fmt.Errorf("malformed GUID %q: %w", s, err)
	}
	copy(u[:], b)
	return u, nil
}

// putGUID stores u in the GPT's mixed-endian encoding: the first three fields little-endian.
func putGUID(b []byte, u [16]byte) {
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	copy(b[8:16], u[8:16])
}

// gptRegion is a run of bytes to place at an absolute disk offset.
type gptRegion struct {
	off  int64
	data []byte
}

// buildGPT encodes the protective MBR, the primary GPT (LBA 1..33) and the backup GPT (last
// 33 sectors). The entry arrays are returned in full; the writer skips their zero sectors.
func buildGPT(l Layout) ([]gptRegion, error) {
	if l.DiskSize%sectorSize != 0 {
		return nil, fmt.Errorf("disk size %d is not a multiple of %d", l.DiskSize, sectorSize)
	}
	if len(l.Partitions) > gptEntries {
		return nil, fmt.Errorf("%d partitions: a GPT holds at most %d", len(l.Partitions), gptEntries)
	}
	totalLBA := uint64(l.DiskSize / sectorSize)
	lastLBA := totalLBA - 1
	firstUsable := uint64(1 + 1 + gptArrayBytes/sectorSize)
	lastUsable := lastLBA - gptArrayBytes/sectorSize - 1
	diskGUID, err := parseGUID(l.DiskGUID)
	if err != nil {
		return nil, fmt.Errorf("disk GUID: %w", err)
	}

	array := make([]byte, gptArrayBytes)
	for _, p := range l.Partitions {
		if p.Index < 1 || p.Index > gptEntries {
			return nil, fmt.Errorf("partition %s: index %d out of 1..%d", p.Name, p.Index, gptEntries)
		}
		e := array[(p.Index-1)*gptEntrySize : p.Index*gptEntrySize]
		if e[0] != 0 || e[8] != 0 {
			return nil, fmt.Errorf("partition %s: index %d used twice", p.Name, p.Index)
		}
		typ, err := parseGUID(p.Type)
		if err != nil {
			return nil, fmt.Errorf("partition %s type: %w", p.Name, err)
		}
		uniq, err := parseGUID(p.GUID)
		if err != nil {
			return nil, fmt.Errorf("partition %s: %w", p.Name, err)
		}
		if p.Start%sectorSize != 0 || p.Size%sectorSize != 0 || p.Size <= 0 {
			return nil, fmt.Errorf("partition %s: start %d and size %d must be positive multiples of %d", p.Name, p.Start, p.Size, sectorSize)
		}
		first := uint64(p.Start / sectorSize)
		last := first + uint64(p.Size/sectorSize) - 1
		if first < firstUsable || last > lastUsable {
			return nil, fmt.Errorf("partition %s: sectors %d..%d outside the usable %d..%d", p.Name, first, last, firstUsable, lastUsable)
		}
		name := utf16.Encode([]rune(p.Name))
		if len(name) > 36 {
			return nil, fmt.Errorf("partition name %q is longer than 36 UTF-16 code units", p.Name)
		}
		putGUID(e[0:16], typ)
		putGUID(e[16:32], uniq)
		binary.LittleEndian.PutUint64(e[32:40], first)
		binary.LittleEndian.PutUint64(e[40:48], last)
		binary.LittleEndian.PutUint64(e[48:56], 0) // attributes: none (no legacy BIOS bootable)
		for i, c := range name {
			binary.LittleEndian.PutUint16(e[56+2*i:], c)
		}
	}
	if err := checkOverlap(l.Partitions); err != nil {
		return nil, err
	}
	arrayCRC := crc32.ChecksumIEEE(array)

	header := func(my, alt, entries uint64) []byte {
		h := make([]byte, sectorSize)
		copy(h[0:8], "EFI PART")
		binary.LittleEndian.PutUint32(h[8:12], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:16], 92)
		binary.LittleEndian.PutUint64(h[24:32], my)
		binary.LittleEndian.PutUint64(h[32:40], alt)
		binary.LittleEndian.PutUint64(h[40:48], firstUsable)
		binary.LittleEndian.PutUint64(h[48:56], lastUsable)
		putGUID(h[56:72], diskGUID)
		binary.LittleEndian.PutUint64(h[72:80], entries)
		binary.LittleEndian.PutUint32(h[80:84], gptEntries)
		binary.LittleEndian.PutUint32(h[84:88], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:92], arrayCRC)
		binary.LittleEndian.PutUint32(h[16:20], crc32.ChecksumIEEE(h[:92]))
		return h
	}

	// Protective MBR: one 0xEE partition covering the disk (clamped to 32 bits), no boot code,
	// disk signature zero.
	mbr := make([]byte, sectorSize)
	pe := mbr[446:462]
	pe[0] = 0x00                           // not active
	pe[1], pe[2], pe[3] = 0x00, 0x02, 0x00 // CHS of LBA 1
	pe[4] = 0xee
	pe[5], pe[6], pe[7] = 0xff, 0xff, 0xff
	binary.LittleEndian.PutUint32(pe[8:12], 1)
	binary.LittleEndian.PutUint32(pe[12:16], uint32(min(totalLBA-1, 0xffffffff)))
	mbr[510], mbr[511] = 0x55, 0xaa

	backupArrayLBA := lastLBA - gptArrayBytes/sectorSize
	return []gptRegion{
		{0, mbr},
		{1 * sectorSize, header(1, lastLBA, 2)},
		{2 * sectorSize, array},
		{int64(backupArrayLBA) * sectorSize, array},
		{int64(lastLBA) * sectorSize, header(lastLBA, 1, backupArrayLBA)},
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
