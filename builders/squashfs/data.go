package squashfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

// fileData locates a regular file's contents. Duplicate files share one.
type fileData struct {
	size    int64
	start   uint64   // offset of the first stored block (set by the writer)
	sizes   []uint32 // on-disk size of each full block; 0 = sparse
	sparse  uint64   // bytes reported as sparse (always 0, see addFileData)
	frag    uint32   // fragment block index or noFragment
	fragOff uint32   // offset of the tail in the fragment block

	// Files of at least one block are checked for duplicates by the writer goroutine, from
	// the digests the workers computed of their blocks.
	blocks []blockRef // the stored blocks so far; dropped at the end of the file
	dup    *fileData  // an earlier file with the same content, whose data this one shares
}

// resolve returns the fileData that holds the data.
func (fd *fileData) resolve() *fileData {
	if fd.dup != nil {
		return fd.dup
	}
	return fd
}

// blockRef is a stored (not all-zero) block of a file: its index and digest.
type blockRef struct {
	idx uint32
	key [32]byte
}

type dedupKey struct {
	size int64
	sum  [sha256.Size]byte
}

// buffer is an input block and room for its compressed form.
type buffer struct{ in, out []byte }

type jobKind uint8

const (
	jobData      jobKind = iota // compress and write block idx of file
	jobFragment                 // compress and write a fragment block
	jobFileStart                // record the file's first block offset
	jobFileEnd                  // the file's blocks are all queued: check for a duplicate
	jobAlign                    // pad the data with zeros to the next 4 KiB boundary of the image
)

type job struct {
	kind jobKind
	buf  *buffer
	n    int
	file *fileData
	idx  int
	done chan struct{} // closed by the worker; nil for markers
	key  [32]byte      // digest of the uncompressed block (data blocks; fragments with a cache)
	out  []byte
	raw  bool
	err  error
}

// zeroPage pads the data to a 4 KiB boundary (jobAlign); never written to.
var zeroPage [devBlockSize]byte

type fragEntry struct {
	start uint64
	size  uint32
}

// pipeline compresses blocks on cfg.workers goroutines and writes them in
// submission order from one writer goroutine, so the output does not depend
// on scheduling.
type pipeline struct {
	ctx   context.Context
	dst   io.WriterAt
	jobs  chan *job
	order chan *job
	free  chan *buffer
	wg    sync.WaitGroup
	wdone chan struct{}

	mu  sync.Mutex
	err error

	blocks     BlockCache // nil: no reuse
	keys       *blockKeys
	cached     atomic.Int64 // blocks taken from blocks
	compressed atomic.Int64 // blocks compressed

	// Owned by the writer goroutine: duplicate detection of files of at least one block.
	seen  map[dedupKey]*fileData
	fhash hash.Hash
	dups  int

	// Owned by the writer goroutine until wdone is closed.
	off   uint64
	frags []fragEntry
}

func newPipeline(ctx context.Context, dst io.WriterAt, cfg config, start uint64) (*pipeline, error) {
	nbuf := 2*cfg.workers + 2
	p := &pipeline{
		ctx:   ctx,
		dst:   dst,
		jobs:  make(chan *job, cfg.workers),
		order: make(chan *job, nbuf+16),
		free:  make(chan *buffer, nbuf),
		wdone: make(chan struct{}),
		off:   start,
		keys:  &blockKeys{}, // without a cache the digests only serve duplicate detection
		seen:  map[dedupKey]*fileData{},
		fhash: sha256.New(),
	}
	if cfg.blocks != nil {
		keys, err := newBlockKeys(cfg)
		if err != nil {
			return nil, err
		}
		p.blocks, p.keys = cfg.blocks, keys
	}
	for range nbuf {
		p.free <- &buffer{in: make([]byte, cfg.blockSize), out: make([]byte, 0, cfg.blockSize)}
	}
	codecs := make([]codec, cfg.workers)
	for i := range codecs {
		c, err := cfg.comp.newCodec(cfg.level, cfg.blockSize)
		if err != nil {
			return nil, fmt.Errorf("squashfs: %w", err)
		}
		codecs[i] = c
	}
	for _, c := range codecs {
		p.wg.Add(1)
		go p.work(c)
	}
	go p.write()
	return p, nil
}

func (p *pipeline) work(c codec) {
	defer p.wg.Done()
	h := sha256.New()
	for j := range p.jobs {
		src := j.buf.in[:j.n]
		if j.kind == jobData || p.blocks != nil {
			j.key = p.keys.key(h, src)
		}
		if p.blocks != nil {
			key := j.key
			// A value must be smaller than the block: anything else is not what this writer
			// would store, so the block is compressed as if the cache had missed.
			if out, ok := p.blocks.Get(key, j.buf.out[:0]); ok && len(out) < len(src) {
				p.cached.Add(1)
				if len(out) == 0 {
					j.out, j.raw = src, true
				} else {
					j.out = out
				}
				close(j.done)
				continue
			}
		}
		out, err := c.compress(j.buf.out[:0], src)
		switch {
		case err != nil:
			j.err = err
		case out == nil:
			j.out, j.raw = src, true
		default:
			j.out = out
		}
		p.compressed.Add(1)
		if p.blocks != nil && err == nil {
			p.blocks.Put(j.key, out)
		}
		close(j.done)
	}
}

func (p *pipeline) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *pipeline) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *pipeline) write() {
	defer close(p.wdone)
	for j := range p.order {
		if j.done != nil {
			<-j.done
		}
		if j.err != nil {
			p.setErr(fmt.Errorf("squashfs: compressing: %w", j.err))
		}
		if p.failed() == nil {
			p.handle(j)
		}
		if j.buf != nil {
			p.free <- j.buf
		}
	}
}

func (p *pipeline) handle(j *job) {
	switch j.kind {
	case jobFileStart:
		j.file.start = p.off
	case jobFileEnd:
		p.fileEnd(j.file)
	case jobAlign:
		pad := (devBlockSize - p.off%devBlockSize) % devBlockSize
		if pad == 0 {
			return
		}
		if _, err := p.dst.WriteAt(zeroPage[:pad], int64(p.off)); err != nil {
			p.setErr(fmt.Errorf("squashfs: writing data: %w", err))
			return
		}
		p.off += pad
	case jobData, jobFragment:
		if _, err := p.dst.WriteAt(j.out, int64(p.off)); err != nil {
			p.setErr(fmt.Errorf("squashfs: writing data: %w", err))
			return
		}
		size := uint32(len(j.out))
		if j.raw {
			size |= 1 << 24
		}
		if j.kind == jobData {
			j.file.sizes[j.idx] = size
			j.file.blocks = append(j.file.blocks, blockRef{uint32(j.idx), j.key})
		} else {
			p.frags = append(p.frags, fragEntry{start: p.off, size: size})
		}
		p.off += uint64(len(j.out))
	}
}

// fileEnd checks whether fd, whose blocks are all written, has the same content as an earlier
// file (same size, same all-zero blocks, same digests of the others). If so it shares the
// earlier file's data and its own blocks are dropped: the next block overwrites them.
func (p *pipeline) fileEnd(fd *fileData) {
	h := p.fhash
	h.Reset()
	var b [8 + 4]byte
	binary.LittleEndian.PutUint64(b[:], uint64(fd.size))
	h.Write(b[:8])
	for _, r := range fd.blocks {
		binary.LittleEndian.PutUint32(b[:4], r.idx)
		h.Write(b[:4])
		h.Write(r.key[:])
	}
	k := dedupKey{size: fd.size}
	h.Sum(k.sum[:0])
	if orig := p.seen[k]; orig != nil {
		if len(fd.blocks) > 0 {
			p.off = fd.start
		}
		fd.dup = orig
		p.dups++
	} else {
		p.seen[k] = fd
	}
	fd.blocks = nil
}

// buffer takes a free buffer, waiting for the writer to release one.
func (p *pipeline) buffer() (*buffer, error) {
	select {
	case b := <-p.free:
		return b, nil
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
}

// submit queues j; compression jobs go to the workers first, then every job
// goes to the writer in order.
func (p *pipeline) submit(j *job) error {
	if err := p.failed(); err != nil {
		return err
	}
	if j.kind == jobData || j.kind == jobFragment {
		j.done = make(chan struct{})
		select {
		case p.jobs <- j:
		case <-p.ctx.Done():
			p.free <- j.buf
			return p.ctx.Err()
		}
	}
	select {
	case p.order <- j:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}

// finish waits for everything queued and returns the end of the data area.
func (p *pipeline) finish() (uint64, error) {
	close(p.jobs)
	close(p.order)
	p.wg.Wait()
	<-p.wdone
	return p.off, p.failed()
}

func (p *pipeline) abort() {
	p.setErr(context.Canceled)
	_, _ = p.finish()
}

// addFileData streams one regular file into the pipeline. Like mksquashfs,
// files of at least one block are cut into blocks compressed in parallel
// (the last one short), smaller files go into fragment blocks, all-zero blocks
// are stored as sparse, and a file equal to an earlier one (size and SHA-256,
// of the content for small files, of the block digests for the others) is
// rewound and shares the earlier data. For files of at least one block the
// writer goroutine decides that (see fileEnd): the returned fileData may turn
// out to be a duplicate, see resolve.
func (b *builder) addFileData(ctx context.Context, r io.Reader, size int64) (*fileData, error) {
	bs := int64(b.cfg.blockSize)
	fd := &fileData{size: size, frag: noFragment}
	if size == 0 {
		return fd, nil
	}
	if size < bs {
		h := sha256.New()
		tail := b.tail[:size]
		if _, err := io.ReadFull(r, tail); err != nil {
			return nil, fmt.Errorf("reading: %w", err)
		}
		h.Write(tail)
		if orig := b.duplicate(size, h); orig != nil {
			return orig, nil
		}
		b.seen[dedupKey{size, [32]byte(h.Sum(nil))}] = fd
		return fd, b.addFragment(fd, tail)
	}
	fd.sizes = make([]uint32, (size+bs-1)/bs)
	started := false
	for i := range fd.sizes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		buf, err := b.pipe.buffer()
		if err != nil {
			return nil, err
		}
		n := min(bs, size-int64(i)*bs)
		in := buf.in[:n]
		if _, err := io.ReadFull(r, in); err != nil {
			b.pipe.free <- buf
			return nil, fmt.Errorf("reading: %w", err)
		}
		if bytes.Equal(in, b.zero[:n]) {
			b.pipe.free <- buf
			continue
		}
		if !started {
			if err := b.pipe.submit(&job{kind: jobFileStart, file: fd}); err != nil {
				b.pipe.free <- buf
				return nil, err
			}
			started = true
		}
		if err := b.pipe.submit(&job{kind: jobData, buf: buf, n: int(n), file: fd, idx: i}); err != nil {
			return nil, err
		}
	}
	// Zero blocks are stored sparsely but, like mksquashfs does for input
	// files that are not sparse on disk (and tar extraction writes them out
	// in full), not accounted as sparse: stat reports all blocks.
	fd.sparse = 0
	if err := b.pipe.submit(&job{kind: jobFileEnd, file: fd}); err != nil {
		return nil, err
	}
	return fd, nil
}

// duplicate returns the earlier file with the same size and hash, if any.
func (b *builder) duplicate(size int64, h hash.Hash) *fileData {
	orig := b.seen[dedupKey{size, [32]byte(h.Sum(nil))}]
	if orig != nil {
		b.dups++
	}
	return orig
}

func (b *builder) addFragment(fd *fileData, tail []byte) error {
	if b.frag != nil && b.fragN+len(tail) > b.cfg.blockSize {
		if err := b.flushFragment(); err != nil {
			return err
		}
	}
	if b.frag == nil {
		buf, err := b.pipe.buffer()
		if err != nil {
			return err
		}
		b.frag, b.fragN = buf, 0
	}
	fd.frag, fd.fragOff = uint32(b.frags), uint32(b.fragN)
	b.fragN += copy(b.frag.in[b.fragN:], tail)
	return nil
}

func (b *builder) flushFragment() error {
	if b.frag == nil {
		return nil
	}
	j := &job{kind: jobFragment, buf: b.frag, n: b.fragN}
	b.frag = nil
	b.frags++
	return b.pipe.submit(j)
}

// finishData flushes the last fragment block and waits for all data.
func (b *builder) finishData() error {
	if err := b.flushFragment(); err != nil {
		b.pipe.abort()
		return err
	}
	end, err := b.pipe.finish()
	if err != nil {
		return err
	}
	if len(b.pipe.frags) != b.frags {
		return fmt.Errorf("squashfs: internal error: %d fragment blocks written, %d submitted", len(b.pipe.frags), b.frags)
	}
	b.dataEnd = end
	return nil
}
