// Package gpt is the one codec of the GUID partition table (UEFI 2.x, chapter 5): the
// protective MBR, headers and partition entries, their CRC32s, GUIDs in the on-disk
// mixed-endian order, UTF-16 names, partition type GUIDs and where the tables lie on a disk.
// The builders write a node's disk through it and the node agent reads and grows that disk
// through it. Standard library only: the node agent imports it.
//
// Decoding and encoding work on byte slices the caller reads and writes: Put methods write a
// structure's fields and leave every other byte as it was, so decoding a sector and putting it
// back unchanged writes the same bytes.
package gpt

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"
)

// Constants of the encoding.
const (
	Signature      = "EFI PART"
	Revision       = 0x00010000 // UEFI 2.x
	HeaderSize     = 92         // bytes of a UEFI 2.x header: the least a header's size field may say
	EntrySize      = 128        // bytes of a UEFI 2.x entry: the least an entry array's entry size may say
	DefaultEntries = 128        // the customary entry count: 128 x 128 bytes, so 34 is the first usable LBA on 512-byte sectors
	NameUnits      = 36         // UTF-16 code units of a partition name
	ProtectiveType = 0xEE       // MBR partition type of a GPT disk's protective entry
	MBRSize        = 512        // bytes of the (protective) MBR, whatever the sector size
)

// Partition type GUIDs (UEFI and the Discoverable Partitions Specification), in the lower-case
// form GUID.String gives.
const (
	TypeESP        = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" // EFI system partition
	TypeRootX86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" // root partition (x86-64)
	TypeLinuxData  = "0fc63daf-8483-4772-8e79-3d69d8477de4" // Linux filesystem data
)

var le = binary.LittleEndian

// GUID is a GUID in RFC 4122 (canonical, big-endian) byte order, as it is written as text.
// On disk the GPT stores its first three fields little-endian: see DecodeGUID and Put.
type GUID [16]byte

// ParseGUID reads a canonical (8-4-4-4-12, any case) GUID.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("malformed GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return g, fmt.Errorf("malformed GUID %q: %w", s, err)
	}
	copy(g[:], b)
	return g, nil
}

// String is the canonical lower-case form.
func (g GUID) String() string {
	s := hex.EncodeToString(g[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// IsZero reports whether g is all zeros (an unused entry's type).
func (g GUID) IsZero() bool { return g == GUID{} }

// DecodeGUID reads a GUID stored in the GPT's mixed-endian encoding (b[:16]).
func DecodeGUID(b []byte) GUID {
	var g GUID
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:16], b[8:16])
	return g
}

// Put stores g in b[:16] in the GPT's mixed-endian encoding.
func (g GUID) Put(b []byte) {
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:16], g[8:16])
}

// Name is a partition name as stored: UTF-16 code units, NUL-terminated unless it fills all
// NameUnits. Keeping the units (not a string) lets a decoded entry be put back unchanged.
type Name [NameUnits]uint16

// NewName encodes s as a partition name.
func NewName(s string) (Name, error) {
	var n Name
	u := utf16.Encode([]rune(s))
	if len(u) > NameUnits {
		return n, fmt.Errorf("partition name %q is longer than %d UTF-16 code units", s, NameUnits)
	}
	copy(n[:], u)
	return n, nil
}

// String decodes the name up to its first NUL.
func (n Name) String() string {
	u := n[:]
	if i := indexZero(u); i >= 0 {
		u = u[:i]
	}
	return string(utf16.Decode(u))
}

func indexZero(u []uint16) int {
	for i, c := range u {
		if c == 0 {
			return i
		}
	}
	return -1
}

// Entry is one partition entry (its first EntrySize bytes).
type Entry struct {
	Type       GUID // partition type; zero for an unused entry
	GUID       GUID // unique partition GUID (PARTUUID)
	FirstLBA   uint64
	LastLBA    uint64 // inclusive
	Attributes uint64
	Name       Name // PARTLABEL
}

// DecodeEntry reads the entry in b[:EntrySize].
func DecodeEntry(b []byte) Entry {
	e := Entry{
		Type:       DecodeGUID(b[0:16]),
		GUID:       DecodeGUID(b[16:32]),
		FirstLBA:   le.Uint64(b[32:]),
		LastLBA:    le.Uint64(b[40:]),
		Attributes: le.Uint64(b[48:]),
	}
	for i := range e.Name {
		e.Name[i] = le.Uint16(b[56+2*i:])
	}
	return e
}

// Put writes e to b[:EntrySize]; bytes after it (of a larger entry size) are left alone.
func (e Entry) Put(b []byte) {
	e.Type.Put(b[0:16])
	e.GUID.Put(b[16:32])
	le.PutUint64(b[32:], e.FirstLBA)
	le.PutUint64(b[40:], e.LastLBA)
	le.PutUint64(b[48:], e.Attributes)
	for i, c := range e.Name {
		le.PutUint16(b[56+2*i:], c)
	}
}

// Used reports whether the entry describes a partition (its type is not zero).
func (e Entry) Used() bool { return !e.Type.IsZero() }

// Header is a GPT header: the primary one at LBA 1 or the backup in the last sector.
type Header struct {
	Revision       uint32
	Size           uint32 // bytes the header CRC covers, HeaderSize up to a sector
	MyLBA          uint64 // where this header is
	AlternateLBA   uint64 // where the other one is
	FirstUsableLBA uint64
	LastUsableLBA  uint64 // inclusive
	DiskGUID       GUID
	EntriesLBA     uint64 // first sector of this header's entry array
	NumEntries     uint32
	EntrySize      uint32
	EntriesCRC     uint32 // CRC32 of the NumEntries x EntrySize bytes of the entry array
}

// DecodeHeader reads the header in sector: it checks the signature, that the size lies between
// HeaderSize and the sector, and the header CRC. It does not check the fields' values against a
// disk: that is the reader's job.
func DecodeHeader(sector []byte) (Header, error) {
	if len(sector) < HeaderSize {
		return Header{}, fmt.Errorf("header sector of %d bytes, want at least %d", len(sector), HeaderSize)
	}
	if string(sector[:8]) != Signature {
		return Header{}, fmt.Errorf("no %q signature", Signature)
	}
	h := Header{
		Revision:       le.Uint32(sector[8:]),
		Size:           le.Uint32(sector[12:]),
		MyLBA:          le.Uint64(sector[24:]),
		AlternateLBA:   le.Uint64(sector[32:]),
		FirstUsableLBA: le.Uint64(sector[40:]),
		LastUsableLBA:  le.Uint64(sector[48:]),
		DiskGUID:       DecodeGUID(sector[56:72]),
		EntriesLBA:     le.Uint64(sector[72:]),
		NumEntries:     le.Uint32(sector[80:]),
		EntrySize:      le.Uint32(sector[84:]),
		EntriesCRC:     le.Uint32(sector[88:]),
	}
	if h.Size < HeaderSize || int(h.Size) > len(sector) {
		return Header{}, fmt.Errorf("header size %d", h.Size)
	}
	if got, want := HeaderCRC(sector[:h.Size]), le.Uint32(sector[16:]); got != want {
		return Header{}, fmt.Errorf("header crc %08x, want %08x", got, want)
	}
	return h, nil
}

// Put writes h and its CRC to sector's first h.Size bytes; the reserved field and the bytes
// between HeaderSize and h.Size are left as they are (zero in a new sector) but covered by the
// CRC. It fails when h.Size is below HeaderSize or beyond the sector.
func (h Header) Put(sector []byte) error {
	if h.Size < HeaderSize || int(h.Size) > len(sector) {
		return fmt.Errorf("header size %d does not fit %d..%d", h.Size, HeaderSize, len(sector))
	}
	copy(sector[0:8], Signature)
	le.PutUint32(sector[8:], h.Revision)
	le.PutUint32(sector[12:], h.Size)
	le.PutUint64(sector[24:], h.MyLBA)
	le.PutUint64(sector[32:], h.AlternateLBA)
	le.PutUint64(sector[40:], h.FirstUsableLBA)
	le.PutUint64(sector[48:], h.LastUsableLBA)
	h.DiskGUID.Put(sector[56:72])
	le.PutUint64(sector[72:], h.EntriesLBA)
	le.PutUint32(sector[80:], h.NumEntries)
	le.PutUint32(sector[84:], h.EntrySize)
	le.PutUint32(sector[88:], h.EntriesCRC)
	le.PutUint32(sector[16:], HeaderCRC(sector[:h.Size]))
	return nil
}

// Backup is the alternate header of h: the same table seen from the other copy, whose entry
// array starts at entriesLBA.
func (h Header) Backup(entriesLBA uint64) Header {
	h.MyLBA, h.AlternateLBA = h.AlternateLBA, h.MyLBA
	h.EntriesLBA = entriesLBA
	return h
}

// HeaderCRC is the CRC32 of a header's first Size bytes, h, counting its CRC field as zero.
func HeaderCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	clear(c[16:20])
	return crc32.ChecksumIEEE(c)
}

// ArrayCRC is the CRC32 of an entry array (NumEntries x EntrySize bytes).
func ArrayCRC(array []byte) uint32 { return crc32.ChecksumIEEE(array) }

// ArraySectors is the number of sectors an array of n entries of size bytes fills.
func ArraySectors(sectorSize int, n, size uint32) uint64 {
	ss := uint64(sectorSize)
	return (uint64(n)*uint64(size) + ss - 1) / ss
}

// Geometry is where the tables lie on a disk: protective MBR at LBA 0, primary header at 1,
// primary entry array from 2, backup entry array just before the backup header in the last
// sector, and the usable sectors in between.
type Geometry struct {
	Sectors          uint64 // of the disk
	FirstUsableLBA   uint64
	LastUsableLBA    uint64 // inclusive
	BackupEntriesLBA uint64
	BackupLBA        uint64 // the last sector
}

// PrimaryEntriesLBA is where the primary entry array starts.
const PrimaryEntriesLBA = 2

// NewGeometry places the tables on a disk of sectors sectors whose entry arrays fill
// arraySectors sectors each. It fails when the disk cannot hold both tables and one usable
// sector.
func NewGeometry(sectors, arraySectors uint64) (Geometry, error) {
	if need := 2 + 2*arraySectors + 2; sectors < need {
		return Geometry{}, fmt.Errorf("disk of %d sectors is too small for a GPT with %d-sector entry arrays (needs %d)",
			sectors, arraySectors, need)
	}
	last := sectors - 1
	return Geometry{
		Sectors:          sectors,
		FirstUsableLBA:   PrimaryEntriesLBA + arraySectors,
		LastUsableLBA:    last - arraySectors - 1,
		BackupEntriesLBA: last - arraySectors,
		BackupLBA:        last,
	}, nil
}

// ProtectiveMBR is sector 0 of a GPT disk of sectors sectors: one partition of type
// ProtectiveType from LBA 1 over the rest of the disk (its size clamped to 32 bits), no boot
// code, disk signature zero, not active.
func ProtectiveMBR(sectors uint64) []byte {
	mbr := make([]byte, MBRSize)
	pe := mbr[446:462]
	pe[1], pe[2], pe[3] = 0x00, 0x02, 0x00 // CHS of LBA 1
	pe[4] = ProtectiveType
	pe[5], pe[6], pe[7] = 0xff, 0xff, 0xff
	le.PutUint32(pe[8:12], 1)
	le.PutUint32(pe[12:16], protectiveSize(sectors))
	mbr[510], mbr[511] = 0x55, 0xaa
	return mbr
}

func protectiveSize(sectors uint64) uint32 {
	return uint32(min(sectors-1, 0xffffffff))
}

// FixProtectiveMBR makes the protective entry of mbr (MBRSize bytes) cover a disk of sectors
// sectors and reports whether it changed mbr. An mbr without the boot signature or without a
// protective entry from LBA 1 (a hybrid MBR, say) is left alone.
func FixProtectiveMBR(mbr []byte, sectors uint64) bool {
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return false
	}
	size := protectiveSize(sectors)
	for i := range 4 {
		e := mbr[446+16*i : 446+16*(i+1)]
		if e[4] != ProtectiveType || le.Uint32(e[8:]) != 1 {
			continue
		}
		if le.Uint32(e[12:]) == size {
			return false
		}
		le.PutUint32(e[12:], size)
		return true
	}
	return false
}
