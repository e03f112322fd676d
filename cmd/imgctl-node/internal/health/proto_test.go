package health

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

// Protobuf encoding helpers, for the tests and the fake CRI server.

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, num uint64, typ int) []byte { return appendVarint(b, num<<3|uint64(typ)) }

func appendBytesField(b []byte, num uint64, s string) []byte {
	b = appendTag(b, num, wireBytes)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

// encodeVersionResponse encodes a VersionResponse the way protoc-generated code does.
func encodeVersionResponse(info CRIInfo) []byte {
	var b []byte
	for i, s := range []string{info.Version, info.RuntimeName, info.RuntimeVersion, info.RuntimeAPIVersion} {
		if s != "" {
			b = appendBytesField(b, uint64(i+1), s)
		}
	}
	return b
}

func TestConsumeVarint(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 300, 1<<32 - 1, 1 << 63, math.MaxUint64} {
		b := appendVarint(nil, v)
		got, n, err := consumeVarint(append(b, 0xAA)) // a trailing byte must not be read
		if err != nil || got != v || n != len(b) {
			t.Errorf("consumeVarint(%x) = %d, %d, %v; want %d, %d", b, got, n, err, v, len(b))
		}
	}
	bad := map[string][]byte{
		"empty":                {},
		"unterminated":         {0x80, 0x80},
		"tenth byte over 1":    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},
		"eleven bytes":         {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00},
		"nine then nothing":    bytes.Repeat([]byte{0x80}, 9),
		"ten continuation set": bytes.Repeat([]byte{0x80}, 10),
	}
	for name, b := range bad {
		if v, n, err := consumeVarint(b); err == nil {
			t.Errorf("%s: consumeVarint(%x) = %d, %d, nil; want an error", name, b, v, n)
		}
	}
}

func TestDecodeVersionResponse(t *testing.T) {
	want := CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "1.6.20~ds1", RuntimeAPIVersion: "v1"}
	got, err := decodeVersionResponse(encodeVersionResponse(want))
	if err != nil || got != want {
		t.Fatalf("decode = %+v, %v; want %+v", got, err, want)
	}
	if got, err := decodeVersionResponse(nil); err != nil || got != (CRIInfo{}) {
		t.Errorf("decode(empty) = %+v, %v; want zero, nil", got, err)
	}
}

// TestDecodeSkipsUnknownFields puts unknown fields of every wire type before, between and after
// the known ones, a group holding every wire type and a nested group, and known field numbers
// with the wrong wire type.
func TestDecodeSkipsUnknownFields(t *testing.T) {
	var group []byte
	group = appendTag(group, 9, wireStartGroup)
	group = appendTag(group, 1, wireVarint)
	group = appendVarint(group, math.MaxUint64)
	group = appendTag(group, 2, wireFixed64)
	group = append(group, 1, 2, 3, 4, 5, 6, 7, 8)
	group = appendBytesField(group, 3, "inside")
	group = appendTag(group, 4, wireFixed32)
	group = append(group, 1, 2, 3, 4)
	group = appendTag(group, 5, wireStartGroup) // nested group
	group = appendTag(group, 1, wireVarint)
	group = appendVarint(group, 7)
	group = appendTag(group, 5, wireEndGroup)
	group = appendTag(group, 9, wireEndGroup)

	var b []byte
	b = appendTag(b, 100, wireVarint)
	b = appendVarint(b, 1<<40)
	b = appendBytesField(b, 1, "0.1.0")
	b = appendTag(b, 5, wireFixed64)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = appendBytesField(b, 2, "containerd")
	b = appendTag(b, 6, wireFixed32)
	b = append(b, 0, 0, 0x80, 0x3f)
	b = append(b, group...)
	b = appendBytesField(b, 7, string(encodeVersionResponse(CRIInfo{RuntimeName: "nested message, not ours"})))
	b = appendBytesField(b, 3, "1.6.20~ds1")
	b = appendTag(b, 2, wireVarint) // known number, wrong wire type: skipped like an unknown field
	b = appendVarint(b, 42)
	b = appendTag(b, 4, wireFixed32)
	b = append(b, 1, 2, 3, 4)
	b = appendBytesField(b, 4, "v1alpha2")
	b = appendBytesField(b, 4, "v1") // repeated: the last one wins
	b = appendTag(b, 1<<29-1, wireBytes)
	b = appendVarint(b, 0)

	want := CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "1.6.20~ds1", RuntimeAPIVersion: "v1"}
	got, err := decodeVersionResponse(b)
	if err != nil || got != want {
		t.Fatalf("decode = %+v, %v; want %+v", got, err, want)
	}
}

func TestDecodeMalformed(t *testing.T) {
	valid := encodeVersionResponse(CRIInfo{Version: "0.1.0", RuntimeName: "containerd"})
	deep := []byte{}
	for range maxGroupDepth + 1 {
		deep = appendTag(deep, 1, wireStartGroup)
	}
	for range maxGroupDepth + 1 {
		deep = appendTag(deep, 1, wireEndGroup)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"truncated key", []byte{0x80}, "truncated"},
		{"field number 0", []byte{0x02, 0x00}, "invalid field number 0"},
		{"field number too big", appendVarint(nil, 1<<32|wireVarint), "invalid field number"},
		{"wire type 6", appendTag(nil, 1, 6), "invalid wire type 6"},
		{"wire type 7", appendTag(nil, 9, 7), "invalid wire type 7"},
		{"truncated varint value", append(appendTag(nil, 8, wireVarint), 0xff), "truncated"},
		{"truncated fixed64", append(appendTag(nil, 8, wireFixed64), 1, 2, 3), "truncated"},
		{"truncated fixed32", append(appendTag(nil, 8, wireFixed32), 1, 2, 3), "truncated"},
		{"truncated length", append(appendTag(nil, 1, wireBytes), 0x80), "truncated"},
		{"string past the end", valid[:len(valid)-1], "truncated"},
		{"huge length", append(appendTag(nil, 1, wireBytes), 0xff, 0xff, 0xff, 0xff, 0x0f), "truncated"},
		{"group without end", append(appendTag(nil, 3, wireStartGroup), appendBytesField(nil, 1, "x")...), "group without end"},
		{"group ended by another field", append(appendTag(nil, 3, wireStartGroup), appendTag(nil, 4, wireEndGroup)...), "ended by field 4"},
		{"stray end group", appendTag(nil, 3, wireEndGroup), "end-group without start"},
		{"groups too deep", deep, "nested deeper"},
		{"invalid UTF-8", appendBytesField(nil, 2, "\xff\xfe"), "invalid UTF-8"},
	} {
		got, err := decodeVersionResponse(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: decode(%x) = %+v, %v; want an error containing %q", tc.name, tc.b, got, err, tc.want)
		}
		if strings.Contains(tc.want, "truncated") && !errors.Is(err, errTruncated) {
			t.Errorf("%s: %v does not match errTruncated", tc.name, err)
		}
	}
}

// FuzzDecodeVersionResponse: no input panics, and a decoded response survives re-encoding.
func FuzzDecodeVersionResponse(f *testing.F) {
	f.Add(encodeVersionResponse(CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "1.6.20", RuntimeAPIVersion: "v1"}))
	f.Add(append(appendTag(nil, 3, wireStartGroup), appendTag(nil, 3, wireEndGroup)...))
	f.Add([]byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := decodeVersionResponse(b)
		if err != nil {
			return
		}
		again, err := decodeVersionResponse(encodeVersionResponse(info))
		if err != nil || again != info {
			t.Fatalf("round trip of %+v = %+v, %v", info, again, err)
		}
	})
}
