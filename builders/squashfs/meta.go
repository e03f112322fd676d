package squashfs

import "encoding/binary"

// metaWriter chops a record stream into 8 KiB metadata blocks, each stored
// compressed (or raw if that is not smaller) behind a 16-bit length header.
// The compressed table is kept in memory; positions are relative to its start.
type metaWriter struct {
	c       codec
	pending []byte
	out     []byte
	starts  []uint64 // start of each completed block in out
	scratch []byte
	err     error
}

func newMetaWriter(c codec) *metaWriter {
	return &metaWriter{c: c, pending: make([]byte, 0, metaSize), scratch: make([]byte, 0, metaSize)}
}

// ref is the reference of the next byte: block start << 16 | offset.
func (m *metaWriter) ref() uint64 {
	return uint64(len(m.out))<<16 | uint64(len(m.pending))
}

// pos is the number of uncompressed bytes written so far.
func (m *metaWriter) pos() uint64 {
	return uint64(len(m.starts))*metaSize + uint64(len(m.pending))
}

// blockStart returns where the block holding uncompressed byte p starts.
func (m *metaWriter) blockStart(p uint64) uint64 {
	if k := p / metaSize; k < uint64(len(m.starts)) {
		return m.starts[k]
	}
	return uint64(len(m.out))
}

func (m *metaWriter) write(p []byte) {
	for len(p) > 0 {
		n := min(len(p), metaSize-len(m.pending))
		m.pending = append(m.pending, p[:n]...)
		p = p[n:]
		if len(m.pending) == metaSize {
			m.flush()
		}
	}
}

// flush stores the pending partial block; call once at the end.
func (m *metaWriter) flush() {
	if len(m.pending) == 0 {
		return
	}
	m.starts = append(m.starts, uint64(len(m.out)))
	out, err := m.c.compress(m.scratch[:0], m.pending)
	if err != nil && m.err == nil {
		m.err = err
	}
	if out == nil {
		m.out = binary.LittleEndian.AppendUint16(m.out, uint16(len(m.pending))|0x8000)
		m.out = append(m.out, m.pending...)
	} else {
		m.out = binary.LittleEndian.AppendUint16(m.out, uint16(len(out)))
		m.out = append(m.out, out...)
		m.scratch = out
	}
	m.pending = m.pending[:0]
}
