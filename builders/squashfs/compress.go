package squashfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// codec compresses one block. compress returns nil when the result would not
// be smaller than src, so the caller stores the block uncompressed. A codec is
// used by one goroutine at a time; every worker gets its own.
type codec interface {
	compress(dst, src []byte) ([]byte, error)
}

// compressor describes one squashfs compression id.
type compressor struct {
	id           uint16
	defaultLevel int
	minLevel     int
	maxLevel     int
	newCodec     func(level, blockSize int) (codec, error)
	// options returns the compressor options payload stored after the
	// superblock, or nil when the settings are the format's defaults.
	options func(level, blockSize int) []byte
}

// The default levels are mksquashfs's: zstd 15, gzip 9, xz (level ignored:
// dictionary = block size, CRC32, no BCJ filters) and lz4 (level 0 = fast,
// anything else = HC at that level).
var compressors = map[string]compressor{
	"zstd": {id: 6, defaultLevel: 15, minLevel: 1, maxLevel: 22, newCodec: newZstd,
		options: func(level, _ int) []byte {
			if level == 15 {
				return nil
			}
			return binary.LittleEndian.AppendUint32(nil, uint32(level))
		}},
	"gzip": {id: 1, defaultLevel: 9, minLevel: 1, maxLevel: 9, newCodec: newZlib,
		options: func(level, _ int) []byte {
			if level == 9 {
				return nil
			}
			b := binary.LittleEndian.AppendUint32(nil, uint32(level))
			b = binary.LittleEndian.AppendUint16(b, 15) // window bits
			return binary.LittleEndian.AppendUint16(b, 0)
		}},
	"xz": {id: 4, defaultLevel: 6, minLevel: 0, maxLevel: 9, newCodec: newXZ,
		options: func(int, int) []byte { return nil }},
	"lz4": {id: 5, defaultLevel: 0, minLevel: 0, maxLevel: 9, newCodec: newLZ4,
		// The kernel requires lz4 options: version 1 (legacy block format), flags.
		options: func(level, _ int) []byte {
			b := binary.LittleEndian.AppendUint32(nil, 1)
			var hc uint32
			if level > 0 {
				hc = 1
			}
			return binary.LittleEndian.AppendUint32(b, hc)
		}},
}

// CheckLevel checks level (0: the compressor's default) against compressor name's range.
func CheckLevel(name string, level int) error {
	comp, ok := compressors[name]
	if !ok {
		return fmt.Errorf("unknown compression %q (supported: %s)", name, strings.Join(Compressors(), ", "))
	}
	if level != 0 && (level < comp.minLevel || level > comp.maxLevel) {
		return fmt.Errorf("%s level %d out of range %d..%d", name, level, comp.minLevel, comp.maxLevel)
	}
	return nil
}

// Compressors returns the supported compression names, sorted.
func Compressors() []string {
	names := make([]string, 0, len(compressors))
	for n := range compressors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

type zstdCodec struct{ enc *zstd.Encoder }

func newZstd(level, blockSize int) (codec, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(1),
		// The kernel decompresses with a window of max(block size, 8 KiB).
		zstd.WithWindowSize(max(blockSize, metaSize)),
		zstd.WithEncoderCRC(false),
		zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return zstdCodec{enc}, nil
}

func (c zstdCodec) compress(dst, src []byte) ([]byte, error) {
	out := c.enc.EncodeAll(src, dst[:0])
	if len(out) >= len(src) {
		return nil, nil
	}
	return out, nil
}

type zlibCodec struct {
	w   *zlib.Writer
	buf bytes.Buffer
}

func newZlib(level, _ int) (codec, error) {
	c := &zlibCodec{}
	w, err := zlib.NewWriterLevel(&c.buf, level)
	if err != nil {
		return nil, fmt.Errorf("zlib encoder: %w", err)
	}
	c.w = w
	return c, nil
}

func (c *zlibCodec) compress(dst, src []byte) ([]byte, error) {
	c.buf = *bytes.NewBuffer(dst[:0])
	c.w.Reset(&c.buf)
	if _, err := c.w.Write(src); err != nil {
		return nil, fmt.Errorf("zlib: %w", err)
	}
	if err := c.w.Close(); err != nil {
		return nil, fmt.Errorf("zlib: %w", err)
	}
	if c.buf.Len() >= len(src) {
		return nil, nil
	}
	return c.buf.Bytes(), nil
}

type xzCodec struct {
	cfg xz.WriterConfig
	buf bytes.Buffer
}

func newXZ(_, blockSize int) (codec, error) {
	// The kernel preallocates a dictionary of the block size (no options
	// stored), so the stream must not ask for more.
	cfg := xz.WriterConfig{DictCap: max(blockSize, metaSize), CheckSum: xz.CRC32}
	if err := cfg.Verify(); err != nil {
		return nil, fmt.Errorf("xz config: %w", err)
	}
	return &xzCodec{cfg: cfg}, nil
}

func (c *xzCodec) compress(dst, src []byte) ([]byte, error) {
	c.buf = *bytes.NewBuffer(dst[:0])
	w, err := c.cfg.NewWriter(&c.buf)
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	if _, err := w.Write(src); err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	if c.buf.Len() >= len(src) {
		return nil, nil
	}
	return c.buf.Bytes(), nil
}

type lz4Codec struct {
	fast lz4.Compressor
	hc   lz4.CompressorHC
	isHC bool
}

func newLZ4(level, _ int) (codec, error) {
	c := &lz4Codec{isHC: level > 0}
	c.hc.Level = lz4.CompressionLevel(1 << (8 + level))
	return c, nil
}

func (c *lz4Codec) compress(dst, src []byte) ([]byte, error) {
	if cap(dst) < len(src) {
		dst = make([]byte, len(src))
	}
	// A destination one byte short of the input makes lz4 give up (n == 0)
	// on anything that would not shrink.
	dst = dst[:len(src)-1]
	var n int
	var err error
	if c.isHC {
		n, err = c.hc.CompressBlock(src, dst)
	} else {
		n, err = c.fast.CompressBlock(src, dst)
	}
	if err != nil || n == 0 {
		return nil, nil // incompressible (or dst too short): store raw
	}
	return dst[:n], nil
}
