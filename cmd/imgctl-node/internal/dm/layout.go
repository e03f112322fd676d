package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// struct dm_ioctl (linux/dm-ioctl.h), native byte order:
//
//	off  size  field
//	  0    12  __u32 version[3]
//	 12     4  __u32 data_size     total size of the buffer, this struct included
//	 16     4  __u32 data_start    where the data area starts, from the start of this struct
//	 20     4  __u32 target_count
//	 24     4  __s32 open_count
//	 28     4  __u32 flags
//	 32     4  __u32 event_nr
//	 36     4  __u32 padding
//	 40     8  __u64 dev           huge_encode_dev: unix.Major/unix.Minor decode it
//	 48   128  char name[DM_NAME_LEN]
//	176   129  char uuid[DM_UUID_LEN]
//	305     7  char data[7]        padding to a multiple of 8
//	312
const (
	HeaderSize = 312

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offOpenCount   = 24
	offFlags       = 28
	offEventNr     = 32
	offDev         = 40
	offName        = 48
	offUUID        = 176
	nameLen        = 128
	uuidLen        = 129
)

// struct dm_target_spec, followed by its NUL-terminated parameter string:
//
//	off  size  field
//	  0     8  __u64 sector_start
//	  8     8  __u64 length        in 512-byte sectors
//	 16     4  __s32 status
//	 20     4  __u32 next          table load: from this spec to the next; status answer: from the data area's start
//	 24    16  char target_type[DM_MAX_TYPE_NAME]
//	 40
const (
	SpecSize = 40

	offSectorStart = 0
	offLength      = 8
	offStatus      = 16
	offNext        = 20
	offTargetType  = 24
	typeLen        = 16

	// specAlign: each spec starts 8-byte aligned (the kernel's align_ptr).
	specAlign = 8
)

var ne = binary.NativeEndian

// Header is struct dm_ioctl.
type Header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string // < 128 bytes, no NUL
	UUID        string // < 129 bytes, no NUL
}

// MarshalTo writes h into the first HeaderSize bytes of buf.
func (h Header) MarshalTo(buf []byte) error {
	if len(buf) < HeaderSize {
		return fmt.Errorf("buffer of %d bytes is shorter than struct dm_ioctl (%d)", len(buf), HeaderSize)
	}
	if err := checkString("name", h.Name, nameLen); err != nil {
		return err
	}
	if err := checkString("uuid", h.UUID, uuidLen); err != nil {
		return err
	}
	clear(buf[:HeaderSize])
	for i, v := range h.Version {
		ne.PutUint32(buf[offVersion+4*i:], v)
	}
	ne.PutUint32(buf[offDataSize:], h.DataSize)
	ne.PutUint32(buf[offDataStart:], h.DataStart)
	ne.PutUint32(buf[offTargetCount:], h.TargetCount)
	ne.PutUint32(buf[offOpenCount:], uint32(h.OpenCount))
	ne.PutUint32(buf[offFlags:], h.Flags)
	ne.PutUint32(buf[offEventNr:], h.EventNr)
	ne.PutUint64(buf[offDev:], h.Dev)
	copy(buf[offName:offName+nameLen], h.Name)
	copy(buf[offUUID:offUUID+uuidLen], h.UUID)
	return nil
}

// UnmarshalHeader reads struct dm_ioctl from the start of buf.
func UnmarshalHeader(buf []byte) (Header, error) {
	if len(buf) < HeaderSize {
		return Header{}, fmt.Errorf("%d bytes are shorter than struct dm_ioctl (%d)", len(buf), HeaderSize)
	}
	var h Header
	for i := range h.Version {
		h.Version[i] = ne.Uint32(buf[offVersion+4*i:])
	}
	h.DataSize = ne.Uint32(buf[offDataSize:])
	h.DataStart = ne.Uint32(buf[offDataStart:])
	h.TargetCount = ne.Uint32(buf[offTargetCount:])
	h.OpenCount = int32(ne.Uint32(buf[offOpenCount:]))
	h.Flags = ne.Uint32(buf[offFlags:])
	h.EventNr = ne.Uint32(buf[offEventNr:])
	h.Dev = ne.Uint64(buf[offDev:])
	h.Name = cString(buf[offName : offName+nameLen])
	h.UUID = cString(buf[offUUID : offUUID+uuidLen])
	return h, nil
}

// Target is one line of a table: Length sectors from Start mapped by Type with Params.
type Target struct {
	Start, Length uint64 // 512-byte sectors
	Type          string // "verity"
	Params        string
}

// TargetStatus is a target with its status line (DM_TABLE_STATUS): Params holds the status.
type TargetStatus = Target

// MarshalTargets encodes targets as a table load's data area: each dm_target_spec followed
// by its NUL-terminated parameters, padded so the next spec starts 8-byte aligned; next is
// the distance from one spec to the next.
func MarshalTargets(targets []Target) ([]byte, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("a table needs at least one target")
	}
	var out []byte
	for i, t := range targets {
		if err := checkString(fmt.Sprintf("target %d type", i), t.Type, typeLen); err != nil {
			return nil, err
		}
		if t.Type == "" {
			return nil, fmt.Errorf("target %d has no type", i)
		}
		if strings.IndexByte(t.Params, 0) >= 0 {
			return nil, fmt.Errorf("target %d (%s) parameters contain a NUL byte", i, t.Type)
		}
		n := alignUp(SpecSize + len(t.Params) + 1)
		spec := make([]byte, n)
		ne.PutUint64(spec[offSectorStart:], t.Start)
		ne.PutUint64(spec[offLength:], t.Length)
		ne.PutUint32(spec[offNext:], uint32(n))
		copy(spec[offTargetType:offTargetType+typeLen], t.Type)
		copy(spec[SpecSize:], t.Params)
		out = append(out, spec...)
	}
	return out, nil
}

// UnmarshalTargets decodes count target specs from a status answer's data area, where each
// spec's next is its successor's offset from the start of data.
func UnmarshalTargets(data []byte, count uint32) ([]TargetStatus, error) {
	var out []TargetStatus
	off := 0
	for i := range count {
		if off < 0 || off+SpecSize > len(data) {
			return nil, fmt.Errorf("target %d at offset %d: outside the %d-byte data area", i, off, len(data))
		}
		spec := data[off:]
		params := spec[SpecSize:]
		end := bytes.IndexByte(params, 0)
		if end < 0 {
			return nil, fmt.Errorf("target %d: parameters are not NUL-terminated within the data area", i)
		}
		out = append(out, TargetStatus{
			Start:  ne.Uint64(spec[offSectorStart:]),
			Length: ne.Uint64(spec[offLength:]),
			Type:   cString(spec[offTargetType : offTargetType+typeLen]),
			Params: string(params[:end]),
		})
		next := int(ne.Uint32(spec[offNext:]))
		if i+1 < count && next <= off {
			return nil, fmt.Errorf("target %d: next offset %d does not move past %d", i, next, off)
		}
		off = next
	}
	return out, nil
}

func alignUp(n int) int { return (n + specAlign - 1) &^ (specAlign - 1) }

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// checkString refuses what does not fit a NUL-terminated char[size].
func checkString(field, s string, size int) error {
	if len(s) >= size {
		return fmt.Errorf("%s %q is %d bytes: at most %d fit", field, s, len(s), size-1)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte", field, s)
	}
	return nil
}
