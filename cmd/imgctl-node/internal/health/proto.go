package health

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// The protobuf wire format, just enough of it to read a CRI VersionResponse without a generated
// package: https://protobuf.dev/programming-guides/encoding/.

// Wire types.
const (
	wireVarint     = 0
	wireFixed64    = 1
	wireBytes      = 2
	wireStartGroup = 3
	wireEndGroup   = 4
	wireFixed32    = 5
)

// maxGroupDepth bounds the recursion into (deprecated) groups of unknown fields, as protobuf-go
// bounds message nesting.
const maxGroupDepth = 100

var errTruncated = errors.New("truncated")

// consumeVarint reads a base-128 varint from b and returns it with the number of bytes read. A
// varint has at most 10 bytes and the tenth may only carry the 64th bit.
func consumeVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		if i == 9 && c > 1 {
			return 0, 0, errors.New("varint overflows 64 bits")
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("varint: %w", errTruncated)
}

// consumeTag reads a field key and returns its field number and wire type.
func consumeTag(b []byte) (num uint64, typ int, n int, err error) {
	v, n, err := consumeVarint(b)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("field key: %w", err)
	}
	num, typ = v>>3, int(v&7)
	if num == 0 || num > 1<<29-1 {
		return 0, 0, 0, fmt.Errorf("invalid field number %d", num)
	}
	return num, typ, n, nil
}

// consumeFieldValue returns the length of the value of field num with wire type typ at the start
// of b (the key already consumed). A group is read up to and including its matching end-group key.
func consumeFieldValue(b []byte, num uint64, typ int, depth int) (int, error) {
	switch typ {
	case wireVarint:
		_, n, err := consumeVarint(b)
		if err != nil {
			return 0, fmt.Errorf("field %d: %w", num, err)
		}
		return n, nil
	case wireFixed64:
		if len(b) < 8 {
			return 0, fmt.Errorf("field %d: fixed64: %w", num, errTruncated)
		}
		return 8, nil
	case wireFixed32:
		if len(b) < 4 {
			return 0, fmt.Errorf("field %d: fixed32: %w", num, errTruncated)
		}
		return 4, nil
	case wireBytes:
		l, n, err := consumeVarint(b)
		if err != nil {
			return 0, fmt.Errorf("field %d: length: %w", num, err)
		}
		if l > uint64(len(b)-n) {
			return 0, fmt.Errorf("field %d: %d bytes declared, %d left: %w", num, l, len(b)-n, errTruncated)
		}
		return n + int(l), nil
	case wireStartGroup:
		if depth >= maxGroupDepth {
			return 0, fmt.Errorf("field %d: groups nested deeper than %d", num, maxGroupDepth)
		}
		off := 0
		for {
			if off == len(b) {
				return 0, fmt.Errorf("field %d: group without end: %w", num, errTruncated)
			}
			inner, innerTyp, n, err := consumeTag(b[off:])
			if err != nil {
				return 0, fmt.Errorf("field %d: %w", num, err)
			}
			off += n
			if innerTyp == wireEndGroup {
				if inner != num {
					return 0, fmt.Errorf("field %d: group ended by field %d", num, inner)
				}
				return off, nil
			}
			n, err = consumeFieldValue(b[off:], inner, innerTyp, depth+1)
			if err != nil {
				return 0, fmt.Errorf("field %d: %w", num, err)
			}
			off += n
		}
	case wireEndGroup:
		return 0, fmt.Errorf("field %d: end-group without start", num)
	default:
		return 0, fmt.Errorf("field %d: invalid wire type %d", num, typ)
	}
}

// decodeVersionResponse decodes runtime.v1(alpha2).VersionResponse:
//
//	string version = 1; string runtime_name = 2; string runtime_version = 3; string runtime_api_version = 4;
//
// Unknown fields are skipped, as is a known field number carrying another wire type (protobuf-go
// treats those as unknown too). The last occurrence of a field wins. Strings must be valid UTF-8,
// as proto3 requires.
func decodeVersionResponse(b []byte) (CRIInfo, error) {
	var info CRIInfo
	for off := 0; off < len(b); {
		num, typ, n, err := consumeTag(b[off:])
		if err != nil {
			return CRIInfo{}, fmt.Errorf("VersionResponse at byte %d: %w", off, err)
		}
		off += n
		var dst *string
		if typ == wireBytes {
			switch num {
			case 1:
				dst = &info.Version
			case 2:
				dst = &info.RuntimeName
			case 3:
				dst = &info.RuntimeVersion
			case 4:
				dst = &info.RuntimeAPIVersion
			}
		}
		start := off
		n, err = consumeFieldValue(b[off:], num, typ, 0)
		if err != nil {
			return CRIInfo{}, fmt.Errorf("VersionResponse at byte %d: %w", start, err)
		}
		off += n
		if dst != nil {
			_, ln, _ := consumeVarint(b[start:]) // cannot fail: consumeFieldValue read it
			s := b[start+ln : off]
			if !utf8.Valid(s) {
				return CRIInfo{}, fmt.Errorf("VersionResponse field %d: invalid UTF-8", num)
			}
			*dst = string(s)
		}
	}
	return info, nil
}
