package squashfs

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"runtime/debug"
	"slices"
	"strings"
)

// BlockCache lets Write reuse the compressed form of data and fragment blocks it (or an earlier
// build) compressed before: a hit skips the compressor, a miss compresses and stores the result.
// The image does not depend on the cache, only the time it takes to write it.
//
// Keys are SHA-256 digests of the codec settings (compressor, level, block size, a fingerprint
// of the codec's output and the versions of the compression libraries) and the uncompressed
// block, so a key names exactly one correct value. Implementations must be safe for
// concurrent use: Options.Workers goroutines call Get and Put.
type BlockCache interface {
	// Get appends the value stored under key to dst and reports whether there was one.
	// An empty value means the block does not shrink and is stored uncompressed.
	Get(key [32]byte, dst []byte) ([]byte, bool)
	// Put stores the value for key: the compressed block, or nothing (empty) when the block is
	// stored uncompressed. It must copy block. Put cannot fail the image: an implementation
	// that cannot store a value drops it.
	Put(key [32]byte, block []byte)
}

// blockKeys derives the cache keys of one Write's blocks.
type blockKeys struct {
	prefix [32]byte // digest of the codec settings
}

// blockKeyVersion changes whenever what a key stands for changes (key layout, how values encode
// raw blocks, codec settings the fingerprint might miss).
const blockKeyVersion = "imgctl squashfs block cache v1"

// codecModules are the modules whose code decides the compressed bytes.
var codecModules = []string{"github.com/klauspost/compress", "github.com/pierrec/lz4/v4", "github.com/ulikunitz/xz"}

func newBlockKeys(cfg config) (*blockKeys, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\x00", blockKeyVersion, cfg.name, cfg.level, cfg.blockSize)
	h.Write([]byte(codecVersions()))
	// A fingerprint of the codec's actual output catches settings and library changes that the
	// versions above do not show (a replaced module, a changed option in compress.go).
	c, err := cfg.comp.newCodec(cfg.level, cfg.blockSize)
	if err != nil {
		return nil, fmt.Errorf("squashfs: %w", err)
	}
	probe := probeBlock(cfg.blockSize)
	out, err := c.compress(make([]byte, 0, len(probe)), probe)
	if err != nil {
		return nil, fmt.Errorf("squashfs: compressing probe block: %w", err)
	}
	h.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(out))))
	h.Write(out)
	return &blockKeys{prefix: [32]byte(h.Sum(nil))}, nil
}

// key is the cache key of one uncompressed block; h is the caller's reusable SHA-256.
func (k *blockKeys) key(h hash.Hash, block []byte) [32]byte {
	h.Reset()
	h.Write(k.prefix[:])
	h.Write(block)
	var key [32]byte
	h.Sum(key[:0])
	return key
}

// codecVersions lists the compression modules this binary was built with ("" when the build
// information is missing, as in some test binaries: the probe fingerprint still applies).
func codecVersions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var lines []string
	for _, m := range bi.Deps {
		if !slices.Contains(codecModules, m.Path) {
			continue
		}
		line := m.Path + "@" + m.Version + " " + m.Sum
		if r := m.Replace; r != nil {
			line += " => " + r.Path + "@" + r.Version + " " + r.Sum
		}
		lines = append(lines, line)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// probeBlock is fixed, partly compressible content: text-like runs and pseudo-random bytes.
func probeBlock(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	words := []string{"squashfs ", "block ", "cache ", "kubelet ", "\x00\x00\x00\x00", "node "}
	for i := 0; i < n; {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		if x%3 == 0 {
			b[i] = byte(x >> 8)
			i++
			continue
		}
		i += copy(b[i:], words[x%uint32(len(words))])
	}
	return b
}
