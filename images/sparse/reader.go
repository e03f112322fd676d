package sparse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Extent is a range of an expanded image that holds data, in expanded bytes.
type Extent struct {
	Off, Len int64
}

// piece is one chunk of an opened image that is not a hole.
type piece struct {
	off, len int64
	raw      bool
	src      int64   // raw: the body's offset in the image
	fill     [4]byte // fill: the pattern
}

// Reader reads an expanded image straight from its sparse encoding (an io.ReaderAt over the
// expanded bytes): holes read as zeros, fill chunks as their pattern, raw chunks from the
// image. It holds only the chunk map; bodies are read when asked for.
type Reader struct {
	r      io.ReaderAt
	size   int64
	pieces []piece
}

// Open parses the chunk headers of the sparse image r of size bytes (never the raw bodies:
// their extent is checked against size). What it keeps is proportional to the number of chunks
// actually present in r, never to what the header claims.
func Open(r io.ReaderAt, size int64) (*Reader, error) {
	hdr := make([]byte, fileHeaderLen)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("sparse: header: %w", eof(err))
	}
	le := binary.LittleEndian
	if le.Uint32(hdr[0:]) != magic {
		return nil, errors.New("sparse: not an Android sparse image (bad magic)")
	}
	if v := le.Uint16(hdr[4:]); v != 1 {
		return nil, fmt.Errorf("sparse: unsupported major version %d", v)
	}
	fileHdr := int64(le.Uint16(hdr[8:]))
	chunkHdr := int64(le.Uint16(hdr[10:]))
	blk := int64(le.Uint32(hdr[12:]))
	totalBlocks := int64(le.Uint32(hdr[16:]))
	chunks := int64(le.Uint32(hdr[20:]))
	if fileHdr < fileHeaderLen || chunkHdr < chunkHeadLen || blk == 0 || blk%4 != 0 {
		return nil, errors.New("sparse: malformed header")
	}
	if blk > maxBlockSize {
		return nil, fmt.Errorf("sparse: block size %d, want at most %d", blk, maxBlockSize)
	}
	if fileHdr > size {
		return nil, fmt.Errorf("sparse: header of %d bytes in an image of %d: %w", fileHdr, size, io.ErrUnexpectedEOF)
	}
	rd := &Reader{r: r, size: totalBlocks * blk}
	pos, off := fileHdr, int64(0)
	ch := make([]byte, chunkHeadLen)
	for i := int64(0); i < chunks; i++ {
		if pos+chunkHdr > size {
			return nil, fmt.Errorf("sparse: chunk %d: header past the end of the image (%d bytes)", i, size)
		}
		if _, err := r.ReadAt(ch, pos); err != nil {
			return nil, fmt.Errorf("sparse: chunk %d: %w", i, eof(err))
		}
		typ := le.Uint16(ch[0:])
		n := int64(le.Uint32(ch[4:])) * blk
		body := int64(le.Uint32(ch[8:])) - chunkHdr
		if off+n > rd.size || body < 0 {
			return nil, fmt.Errorf("sparse: chunk %d overruns the image", i)
		}
		pos += chunkHdr
		if pos+body > size {
			return nil, fmt.Errorf("sparse: chunk %d: body past the end of the image (%d bytes): %w", i, size, io.ErrUnexpectedEOF)
		}
		switch typ {
		case chunkRaw:
			if body != n {
				return nil, fmt.Errorf("sparse: raw chunk %d has %d bytes for %d", i, body, n)
			}
			if n > 0 {
				rd.pieces = append(rd.pieces, piece{off: off, len: n, raw: true, src: pos})
			}
		case chunkFill:
			if body != 4 {
				return nil, fmt.Errorf("sparse: fill chunk %d is malformed", i)
			}
			var v [4]byte
			if _, err := r.ReadAt(v[:], pos); err != nil {
				return nil, fmt.Errorf("sparse: chunk %d: %w", i, eof(err))
			}
			if v != [4]byte{} && n > 0 {
				rd.pieces = append(rd.pieces, piece{off: off, len: n, fill: v})
			}
		case chunkDontCare, chunkCRC32:
		default:
			return nil, fmt.Errorf("sparse: chunk %d has unknown type %#x", i, typ)
		}
		pos += body
		if typ != chunkCRC32 {
			off += n
		}
	}
	return rd, nil
}

// eof turns io.EOF from ReadAt into io.ErrUnexpectedEOF: the image ended inside a header.
func eof(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Size is the size of the expanded image.
func (rd *Reader) Size() int64 { return rd.size }

// Extents returns the ranges that hold data (raw chunks and fills of a non-zero pattern), in
// order, adjacent ones merged. Everything else reads as zeros.
func (rd *Reader) Extents() []Extent {
	var out []Extent
	for _, p := range rd.pieces {
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == p.off {
			out[k].Len += p.len
			continue
		}
		out = append(out, Extent{p.off, p.len})
	}
	return out
}

// ReadAt implements io.ReaderAt over the expanded image.
func (rd *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("sparse: read at negative offset %d", off)
	}
	if off >= rd.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > rd.size-off {
		p = p[:rd.size-off]
	}
	// The first piece that ends after off.
	i := sort.Search(len(rd.pieces), func(i int) bool { return rd.pieces[i].off+rd.pieces[i].len > off })
	done := 0
	for done < len(p) {
		at := off + int64(done)
		rest := p[done:]
		if i >= len(rd.pieces) || rd.pieces[i].off >= at+int64(len(rest)) {
			clear(rest)
			done = len(p)
			break
		}
		pc := rd.pieces[i]
		if pc.off > at { // a hole before the piece
			k := pc.off - at
			clear(rest[:k])
			done += int(k)
			continue
		}
		rel := at - pc.off
		m := min(int64(len(rest)), pc.len-rel)
		if pc.raw {
			if _, err := rd.r.ReadAt(rest[:m], pc.src+rel); err != nil {
				return done, fmt.Errorf("sparse: reading data at %d: %w", pc.src+rel, eof(err))
			}
		} else {
			for j := int64(0); j < m; j++ {
				rest[j] = pc.fill[(rel+j)%4]
			}
		}
		done += int(m)
		i++
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}
