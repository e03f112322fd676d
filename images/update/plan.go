package update

import "fmt"

// OpKind says where the blocks of an Op come from.
type OpKind uint8

// Kinds of Op.
const (
	Keep  OpKind = iota // the inactive slot already holds them: nothing to do
	Copy                // read them from the active slot at Src
	Fetch               // download them from the root blob (HTTP Range)
)

func (k OpKind) String() string {
	switch k {
	case Keep:
		return "keep"
	case Copy:
		return "copy"
	case Fetch:
		return "fetch"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is a run of Count blocks written at block Dst of the new root. For Copy, Src is the first
// block in the active slot; Keep and Fetch leave it 0 (a Fetch reads the blob at Dst).
type Op struct {
	Kind            OpKind
	Dst, Src, Count uint64
}

// Plan says how to get every block of the new root, in order of Dst, with adjacent blocks of
// the same kind merged into one Op (one Range request, one sequential copy). The counts are in
// blocks of BlockSize.
type Plan struct {
	Ops                       []Op
	Blocks, Keep, Copy, Fetch uint64
}

// Bytes converts a block count of the plan to bytes.
func (p Plan) Bytes(blocks uint64) int64 { return int64(blocks) * BlockSize }

// PlanBlocks plans writing a root whose blocks hash to want (dm-verity level-0 hashes, with the
// fixed salt, so equal blocks hash equally across images) into a slot whose blocks now hash to
// target (nil: unknown, nothing kept), given that the running slot's blocks hash to active
// (nil: nothing to copy). Block i is kept when target[i] == want[i], else copied from a block of
// active with that hash — preferring the block after the previous copy's source, then block i,
// so runs stay sequential — else fetched.
func PlanBlocks(want, target, active [][32]byte) Plan {
	first := make(map[[32]byte]uint64, len(active))
	for i := len(active) - 1; i >= 0; i-- {
		first[active[i]] = uint64(i)
	}
	p := Plan{Blocks: uint64(len(want))}
	add := func(kind OpKind, dst, src uint64) {
		if n := len(p.Ops); n > 0 {
			last := &p.Ops[n-1]
			if last.Kind == kind && last.Dst+last.Count == dst && (kind != Copy || last.Src+last.Count == src) {
				last.Count++
				return
			}
		}
		p.Ops = append(p.Ops, Op{Kind: kind, Dst: dst, Src: src, Count: 1})
	}
	for i, h := range want {
		dst := uint64(i)
		if i < len(target) && target[i] == h {
			p.Keep++
			add(Keep, dst, 0)
			continue
		}
		src, ok := uint64(0), false
		if n := len(p.Ops); n > 0 && p.Ops[n-1].Kind == Copy {
			if next := p.Ops[n-1].Src + p.Ops[n-1].Count; next < uint64(len(active)) && active[next] == h {
				src, ok = next, true
			}
		}
		if !ok && i < len(active) && active[i] == h {
			src, ok = dst, true
		}
		if !ok {
			src, ok = first[h]
		}
		if ok {
			p.Copy++
			add(Copy, dst, src)
			continue
		}
		p.Fetch++
		add(Fetch, dst, 0)
	}
	return p
}
