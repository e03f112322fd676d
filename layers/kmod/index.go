package kmod

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Binary index format written by depmod (libkmod "index" v2.1):
//
//	u32 magic (0xB007F457), u32 version (0x00020001), u32 root offset,
//	then the nodes. Every integer is big-endian. A node offset carries
//	flags in its high nibble: prefix (0x8), values (0x4), children (0x2).
//	A node is: [prefix NUL] [first last child-offsets...] [count (priority value NUL)...]
//
// depmod writes the trie in post order (children before their parent), and
// so do we, which makes the output byte-identical.
const (
	indexMagic      = 0xB007F457
	indexVersion    = 0x00020001
	nodePrefix      = 0x80000000
	nodeValues      = 0x40000000
	nodeChilds      = 0x20000000
	nodeOffsetMask  = 0x0FFFFFFF
	indexChildCount = 128
)

type indexValue struct {
	priority uint32
	value    string
}

type indexNode struct {
	prefix   string
	values   []indexValue
	first    int // indexChildCount when the node has no children
	last     int
	children map[byte]*indexNode
}

func newIndexNode(prefix string) *indexNode {
	return &indexNode{prefix: prefix, first: indexChildCount}
}

// trie is depmod's in-memory index, built by repeated inserts.
type trie struct{ root *indexNode }

func newTrie() *trie { return &trie{root: newIndexNode("")} }

func checkASCII(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] >= indexChildCount {
			return fmt.Errorf("index: bad character 0x%x in %q: only 7-bit ASCII is supported", s[i], s)
		}
	}
	return nil
}

// addValue inserts v before the first value whose priority is not lower,
// so values are sorted by priority and, among equal priorities, the most
// recently inserted comes first (as depmod does).
func (n *indexNode) addValue(value string, priority uint32) {
	i := 0
	for i < len(n.values) && n.values[i].priority < priority {
		i++
	}
	n.values = append(n.values, indexValue{})
	copy(n.values[i+1:], n.values[i:])
	n.values[i] = indexValue{priority: priority, value: value}
}

func (n *indexNode) setChild(ch byte, c *indexNode) {
	if n.children == nil {
		n.children = make(map[byte]*indexNode)
	}
	n.children[ch] = c
	if int(ch) < n.first {
		n.first = int(ch)
	}
	if int(ch) > n.last {
		n.last = int(ch)
	}
}

// insert adds value under key with the given priority.
func (t *trie) insert(key, value string, priority uint32) error {
	if err := checkASCII(key); err != nil {
		return err
	}
	if err := checkASCII(value); err != nil {
		return err
	}
	node := t.root
	i := 0
	for {
		// Make node.prefix a prefix of key[i:], splitting the node if needed.
		j := 0
		for ; j < len(node.prefix); j++ {
			ch := node.prefix[j]
			if i+j < len(key) && key[i+j] == ch {
				continue
			}
			child := &indexNode{
				prefix:   node.prefix[j+1:],
				values:   node.values,
				first:    node.first,
				last:     node.last,
				children: node.children,
			}
			*node = indexNode{prefix: node.prefix[:j], first: indexChildCount}
			node.setChild(ch, child)
			break
		}
		i += j
		if i == len(key) {
			node.addValue(value, priority)
			return nil
		}
		ch := key[i]
		child := node.children[ch]
		if child == nil {
			child = newIndexNode(key[i+1:])
			child.addValue(value, priority)
			node.setChild(ch, child)
			return nil
		}
		node = child
		i++
	}
}

// bytes serialises the trie exactly like depmod's index_write.
func (t *trie) bytes() ([]byte, error) {
	var buf bytes.Buffer
	var u [4]byte
	put := func(v uint32) {
		binary.BigEndian.PutUint32(u[:], v)
		buf.Write(u[:])
	}
	put(indexMagic)
	put(indexVersion)
	put(0) // root offset, patched below
	root, err := writeNode(&buf, t.root)
	if err != nil {
		return nil, err
	}
	out := buf.Bytes()
	binary.BigEndian.PutUint32(out[8:12], root)
	return out, nil
}

func writeNode(buf *bytes.Buffer, n *indexNode) (uint32, error) {
	if n == nil {
		return 0, nil
	}
	var childOffs []uint32
	if n.first < indexChildCount {
		childOffs = make([]uint32, 0, n.last-n.first+1)
		for c := n.first; c <= n.last; c++ {
			off, err := writeNode(buf, n.children[byte(c)])
			if err != nil {
				return 0, err
			}
			childOffs = append(childOffs, off)
		}
	}
	if buf.Len() > nodeOffsetMask {
		return 0, fmt.Errorf("index: too large (%d bytes)", buf.Len())
	}
	offset := uint32(buf.Len())
	var u [4]byte
	put := func(v uint32) {
		binary.BigEndian.PutUint32(u[:], v)
		buf.Write(u[:])
	}
	if n.prefix != "" {
		buf.WriteString(n.prefix)
		buf.WriteByte(0)
		offset |= nodePrefix
	}
	if len(childOffs) > 0 {
		buf.WriteByte(byte(n.first))
		buf.WriteByte(byte(n.last))
		for _, o := range childOffs {
			put(o)
		}
		offset |= nodeChilds
	}
	if len(n.values) > 0 {
		put(uint32(len(n.values)))
		for _, v := range n.values {
			put(v.priority)
			buf.WriteString(v.value)
			buf.WriteByte(0)
		}
		offset |= nodeValues
	}
	return offset, nil
}

// hashSuperfast is Paul Hsieh's hash as used by kmod's hash table; depmod
// iterates its tables bucket by bucket, which fixes the order of
// modules.symbols (and of modules when there is no modules.order).
func hashSuperfast(key string) uint32 {
	k := []byte(key)
	h := uint32(len(k))
	rem := len(k) & 3
	le16 := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 }
	sc := func(b byte) uint32 { return uint32(int32(int8(b))) }
	for n := len(k) / 4; n > 0; n-- {
		h += le16(k)
		tmp := (le16(k[2:]) << 11) ^ h
		h = (h << 16) ^ tmp
		k = k[4:]
		h += h >> 11
	}
	switch rem {
	case 3:
		h += le16(k)
		h ^= h << 16
		h ^= sc(k[2]) << 18
		h += h >> 11
	case 2:
		h += le16(k)
		h ^= h << 11
		h += h >> 17
	case 1:
		h += sc(k[0])
		h ^= h << 10
		h += h >> 1
	}
	h ^= h << 3
	h += h >> 5
	h ^= h << 4
	h += h >> 17
	h ^= h << 25
	h += h >> 6
	return h
}

// hashOrderLess orders keys as kmod's hash iteration visits them for a
// table of nBuckets (a power of two) buckets: by bucket, then by strcmp.
func hashOrderLess(a, b string, nBuckets uint32) bool {
	ba, bb := hashSuperfast(a)&(nBuckets-1), hashSuperfast(b)&(nBuckets-1)
	if ba != bb {
		return ba < bb
	}
	return a < b
}
