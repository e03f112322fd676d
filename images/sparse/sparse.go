// Package sparse reads and writes Android sparse images, the form in which the store keeps
// disk.raw: only blocks holding data are stored and hashed, so a mostly empty disk is cheap.
package sparse

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/layers/progress"
)

// BlockSize is the block size of the images this package writes.
const BlockSize = 4096

const (
	magic         = 0xed26ff3a
	fileHeaderLen = 28
	chunkHeadLen  = 12
	chunkRaw      = 0xcac1
	chunkFill     = 0xcac2
	chunkDontCare = 0xcac3
	chunkCRC32    = 0xcac4
	// maxBlockSize bounds the block size Expand accepts (images use 4 KiB), so that block counts
	// times it never overflow int64.
	maxBlockSize = 64 << 20
	// fillBuf bounds the buffer a fill chunk is written from.
	fillBuf = 256 << 10
)

// Stats describes a written image.
type Stats struct {
	Size       int64 // bytes of the expanded image
	DataBlocks int64 // blocks stored
	Chunks     int
}

type run struct {
	data   bool
	blocks int64
}

// Write encodes the first size bytes of f as a sparse image. Chunks depend only on the
// content (a block is data unless it is all zeros), never on how the filesystem allocated f,
// so the result is deterministic; holes are skipped without being read.
func Write(ctx context.Context, w io.Writer, f *os.File, size int64) (Stats, error) {
	if size%BlockSize != 0 {
		return Stats{}, fmt.Errorf("sparse: image size %d is not a multiple of %d", size, BlockSize)
	}
	step := progress.Start(ctx, "find data in disk image")
	step.SetTotal(size)
	runs, err := scan(ctx, f, size, step)
	step.Done(err)
	if err != nil {
		return Stats{}, err
	}
	step = progress.Start(ctx, "write sparse image")
	st, err := write(ctx, w, f, size, runs, step)
	step.Done(err)
	return st, err
}

// write encodes runs of f, reporting bytes written and chunks to step.
func write(ctx context.Context, w io.Writer, f *os.File, size int64, runs []run, step *progress.Step) (Stats, error) {
	st := Stats{Size: size, Chunks: len(runs)}
	out := int64(fileHeaderLen)
	for _, r := range runs {
		out += chunkHeadLen
		if r.data {
			out += r.blocks * BlockSize
		}
	}
	step.SetTotal(out)
	bw := bufio.NewWriterSize(io.MultiWriter(w, step.Writer()), 1<<20)
	hdr := make([]byte, fileHeaderLen)
	binary.LittleEndian.PutUint32(hdr[0:], magic)
	binary.LittleEndian.PutUint16(hdr[4:], 1) // major version
	binary.LittleEndian.PutUint16(hdr[6:], 0)
	binary.LittleEndian.PutUint16(hdr[8:], fileHeaderLen)
	binary.LittleEndian.PutUint16(hdr[10:], chunkHeadLen)
	binary.LittleEndian.PutUint32(hdr[12:], BlockSize)
	binary.LittleEndian.PutUint32(hdr[16:], uint32(size/BlockSize))
	binary.LittleEndian.PutUint32(hdr[20:], uint32(len(runs)))
	if _, err := bw.Write(hdr); err != nil {
		return Stats{}, err
	}
	var off int64
	ch := make([]byte, chunkHeadLen)
	for _, r := range runs {
		if err := ctx.Err(); err != nil {
			return Stats{}, err
		}
		n := r.blocks * BlockSize
		typ, total := uint16(chunkDontCare), int64(chunkHeadLen)
		if r.data {
			typ, total = chunkRaw, chunkHeadLen+n
			st.DataBlocks += r.blocks
		}
		if r.blocks > 0xffffffff || total > 0xffffffff {
			return Stats{}, fmt.Errorf("sparse: chunk of %d blocks is too large", r.blocks)
		}
		binary.LittleEndian.PutUint16(ch[0:], typ)
		binary.LittleEndian.PutUint16(ch[2:], 0)
		binary.LittleEndian.PutUint32(ch[4:], uint32(r.blocks))
		binary.LittleEndian.PutUint32(ch[8:], uint32(total))
		if _, err := bw.Write(ch); err != nil {
			return Stats{}, err
		}
		if r.data {
			m, err := io.Copy(bw, io.NewSectionReader(f, off, n))
			if err != nil {
				return Stats{}, fmt.Errorf("sparse: reading %s: %w", f.Name(), err)
			}
			if m != n {
				return Stats{}, fmt.Errorf("sparse: %s changed while it was read", f.Name())
			}
		}
		off += n
		step.Add(0, 1)
	}
	return st, bw.Flush()
}

// scan classifies every block, reading only the file's data extents.
func scan(ctx context.Context, f *os.File, size int64, step *progress.Step) ([]run, error) {
	var runs []run
	add := func(data bool, blocks int64) {
		if blocks == 0 {
			return
		}
		if len(runs) > 0 && runs[len(runs)-1].data == data {
			runs[len(runs)-1].blocks += blocks
			return
		}
		runs = append(runs, run{data, blocks})
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, BlockSize)
	var pos int64
	for pos < size {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		step.Set(pos, 0)
		start, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && start >= size) {
			start = size // only holes from pos to the end
		} else if err != nil {
			start = pos // no SEEK_DATA support: read everything
		}
		start -= start % BlockSize
		add(false, (start-pos)/BlockSize)
		pos = start
		if pos >= size {
			break
		}
		end, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if r := end % BlockSize; r != 0 {
			end += BlockSize - r
		}
		for pos < end {
			n := min(int64(len(buf)), end-pos)
			if _, err := f.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("sparse: reading %s: %w", f.Name(), err)
			}
			for i := int64(0); i < n; i += BlockSize {
				add(!bytes.Equal(buf[i:i+BlockSize], zero), 1)
			}
			pos += n
			step.Set(pos, 0)
		}
	}
	step.Set(size, 0)
	return runs, nil
}

// Expand writes the image read from r into dst, which must be empty: data is written,
// DONT_CARE chunks stay holes. It returns the expanded size.
func Expand(ctx context.Context, dst *os.File, r io.Reader) (int64, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	hdr := make([]byte, fileHeaderLen)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return 0, fmt.Errorf("sparse: header: %w", err)
	}
	if binary.LittleEndian.Uint32(hdr[0:]) != magic {
		return 0, errors.New("sparse: not an Android sparse image (bad magic)")
	}
	if v := binary.LittleEndian.Uint16(hdr[4:]); v != 1 {
		return 0, fmt.Errorf("sparse: unsupported major version %d", v)
	}
	fileHdr := int(binary.LittleEndian.Uint16(hdr[8:]))
	chunkHdr := int(binary.LittleEndian.Uint16(hdr[10:]))
	blk := int64(binary.LittleEndian.Uint32(hdr[12:]))
	totalBlocks := int64(binary.LittleEndian.Uint32(hdr[16:]))
	chunks := binary.LittleEndian.Uint32(hdr[20:])
	if fileHdr < fileHeaderLen || chunkHdr < chunkHeadLen || blk == 0 || blk%4 != 0 {
		return 0, errors.New("sparse: malformed header")
	}
	if blk > maxBlockSize {
		return 0, fmt.Errorf("sparse: block size %d, want at most %d", blk, maxBlockSize)
	}
	if _, err := br.Discard(fileHdr - fileHeaderLen); err != nil {
		return 0, err
	}
	var off int64
	ch := make([]byte, chunkHdr)
	for i := uint32(0); i < chunks; i++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(br, ch); err != nil {
			return 0, fmt.Errorf("sparse: chunk %d: %w", i, err)
		}
		typ := binary.LittleEndian.Uint16(ch[0:])
		n := int64(binary.LittleEndian.Uint32(ch[4:])) * blk
		body := int64(binary.LittleEndian.Uint32(ch[8:])) - int64(chunkHdr)
		if off+n > totalBlocks*blk || body < 0 {
			return 0, fmt.Errorf("sparse: chunk %d overruns the image", i)
		}
		switch typ {
		case chunkRaw:
			if body != n {
				return 0, fmt.Errorf("sparse: raw chunk %d has %d bytes for %d", i, body, n)
			}
			m, err := io.Copy(io.NewOffsetWriter(dst, off), io.LimitReader(br, n))
			if err == nil && m != n {
				err = io.ErrUnexpectedEOF // the image ends inside the chunk
			}
			if err != nil {
				return 0, fmt.Errorf("sparse: chunk %d: %w", i, err)
			}
		case chunkFill:
			if body != 4 {
				return 0, fmt.Errorf("sparse: fill chunk %d is malformed", i)
			}
			var v [4]byte
			if _, err := io.ReadFull(br, v[:]); err != nil {
				return 0, err
			}
			if v != [4]byte{} && n > 0 {
				// n and fillBuf are multiples of 4, so every write starts the pattern afresh.
				pattern := bytes.Repeat(v[:], int(min(n, fillBuf)/4))
				for p := int64(0); p < n; p += int64(len(pattern)) {
					if _, err := dst.WriteAt(pattern[:min(int64(len(pattern)), n-p)], off+p); err != nil {
						return 0, err
					}
				}
			}
		case chunkDontCare, chunkCRC32:
			if _, err := br.Discard(int(body)); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("sparse: chunk %d has unknown type %#x", i, typ)
		}
		if typ != chunkCRC32 {
			off += n
		}
	}
	size := totalBlocks * blk
	if err := dst.Truncate(size); err != nil {
		return 0, err
	}
	return size, nil
}
