package update

import (
	"reflect"
	"testing"
)

// hs makes block hashes from small numbers: hs(1, 2) is two blocks with hashes h(1), h(2).
func hs(ns ...int) [][32]byte {
	out := make([][32]byte, len(ns))
	for i, n := range ns {
		out[i] = [32]byte{byte(n), byte(n >> 8), 0xaa}
	}
	return out
}

func TestPlanBlocks(t *testing.T) {
	for _, c := range []struct {
		name                 string
		want, target, active [][32]byte
		ops                  []Op
		keep, copy, fetch    uint64
	}{
		{name: "empty"},
		{
			name: "all keep", want: hs(1, 2, 3), target: hs(1, 2, 3), active: hs(9, 9, 9),
			ops: []Op{{Keep, 0, 0, 3}}, keep: 3,
		},
		{
			name: "all fetch", want: hs(1, 2, 3, 4), target: nil, active: hs(5, 6),
			ops: []Op{{Fetch, 0, 0, 4}}, fetch: 4,
		},
		{
			name: "all copy in place", want: hs(1, 2, 3), target: hs(0, 0, 0), active: hs(1, 2, 3),
			ops: []Op{{Copy, 0, 0, 3}}, copy: 3,
		},
		{
			// A file grew by one block early on: the rest of the root moved one block on.
			name: "copy from shifted positions", want: hs(1, 7, 2, 3, 4), target: nil, active: hs(1, 2, 3, 4),
			ops: []Op{{Copy, 0, 0, 1}, {Fetch, 1, 0, 1}, {Copy, 2, 1, 3}}, copy: 4, fetch: 1,
		},
		{
			name: "shifted back", want: hs(2, 3, 4), target: nil, active: hs(1, 2, 3, 4),
			ops: []Op{{Copy, 0, 1, 3}}, copy: 3,
		},
		{
			// Equal blocks (zeros) in want: each is copied; the run continues where it can.
			name: "duplicates in want", want: hs(0, 0, 0, 5, 0), target: nil, active: hs(0, 5),
			ops: []Op{{Copy, 0, 0, 1}, {Copy, 1, 0, 1}, {Copy, 2, 0, 2}, {Copy, 4, 0, 1}}, copy: 5,
		},
		{
			name: "duplicate fetches", want: hs(8, 8, 8), target: nil, active: hs(1),
			ops: []Op{{Fetch, 0, 0, 3}}, fetch: 3,
		},
		{
			// A half-written slot (resume): its first blocks are right, the rest are the old image's.
			name: "resume", want: hs(1, 2, 3, 4, 5, 6), target: hs(1, 2, 3, 40, 50, 60), active: hs(10, 20, 30, 40, 5, 6),
			ops: []Op{{Keep, 0, 0, 3}, {Fetch, 3, 0, 1}, {Copy, 4, 4, 2}}, keep: 3, copy: 2, fetch: 1,
		},
		{
			name: "coalesced runs", want: hs(1, 2, 3, 4, 5, 6, 7, 8), target: hs(1, 2, 0, 0, 0, 0, 0, 8), active: hs(0, 0, 0, 0, 5, 6, 0, 0),
			ops: []Op{{Keep, 0, 0, 2}, {Fetch, 2, 0, 2}, {Copy, 4, 4, 2}, {Fetch, 6, 0, 1}, {Keep, 7, 0, 1}}, keep: 3, copy: 2, fetch: 3,
		},
		{
			// A block the target already holds is kept even when active has it too.
			name: "keep wins over copy", want: hs(1, 2), target: hs(1, 0), active: hs(1, 2),
			ops: []Op{{Keep, 0, 0, 1}, {Copy, 1, 1, 1}}, keep: 1, copy: 1,
		},
		{
			name: "target longer and shorter", want: hs(1, 2, 3), target: hs(1), active: nil,
			ops: []Op{{Keep, 0, 0, 1}, {Fetch, 1, 0, 2}}, keep: 1, fetch: 2,
		},
		{
			// Without a run to continue, block i of active is preferred over the first block
			// with that hash: a sequential copy.
			name: "same position preferred", want: hs(9, 1, 2), target: nil, active: hs(1, 1, 2),
			ops: []Op{{Fetch, 0, 0, 1}, {Copy, 1, 1, 2}}, copy: 2, fetch: 1,
		},
		{
			// Copy runs break when the source does not continue.
			name: "copy sources not contiguous", want: hs(1, 2, 3), target: nil, active: hs(3, 2, 1),
			ops: []Op{{Copy, 0, 2, 1}, {Copy, 1, 1, 1}, {Copy, 2, 0, 1}}, copy: 3,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := PlanBlocks(c.want, c.target, c.active)
			if !reflect.DeepEqual(p.Ops, c.ops) {
				t.Errorf("ops:\n got %v\nwant %v", p.Ops, c.ops)
			}
			if p.Blocks != uint64(len(c.want)) || p.Keep != c.keep || p.Copy != c.copy || p.Fetch != c.fetch {
				t.Errorf("counts blocks/keep/copy/fetch = %d/%d/%d/%d, want %d/%d/%d/%d",
					p.Blocks, p.Keep, p.Copy, p.Fetch, len(c.want), c.keep, c.copy, c.fetch)
			}
			checkPlan(t, p, c.want, c.target, c.active)
		})
	}
}

// checkPlan replays a plan and checks it yields want: the invariant behind every case.
func checkPlan(t *testing.T, p Plan, want, target, active [][32]byte) {
	t.Helper()
	got := make([][32]byte, len(want))
	var next uint64
	for _, op := range p.Ops {
		if op.Dst != next || op.Count == 0 {
			t.Fatalf("op %v does not continue at block %d", op, next)
		}
		for i := range op.Count {
			d := op.Dst + i
			switch op.Kind {
			case Keep:
				got[d] = target[d]
			case Copy:
				got[d] = active[op.Src+i]
			case Fetch:
				got[d] = want[d]
			}
		}
		next += op.Count
	}
	if next != uint64(len(want)) || !reflect.DeepEqual(got, want) && len(want) > 0 {
		t.Errorf("replaying the plan gives %d blocks that differ from want", next)
	}
	if p.Keep+p.Copy+p.Fetch != p.Blocks {
		t.Errorf("counts %d+%d+%d != %d blocks", p.Keep, p.Copy, p.Fetch, p.Blocks)
	}
}

func TestPlanBlocksLarge(t *testing.T) {
	// A kubelet-like change: 10,000 blocks, 300 in the middle differ.
	const n = 10000
	want, active := make([][32]byte, n), make([][32]byte, n)
	for i := range n {
		want[i] = [32]byte{byte(i), byte(i >> 8), 1}
		active[i] = want[i]
	}
	for i := 5000; i < 5300; i++ {
		want[i][2] = 2
	}
	p := PlanBlocks(want, nil, active)
	if p.Fetch != 300 || p.Copy != n-300 || len(p.Ops) != 3 {
		t.Errorf("plan: %d ops, copy %d fetch %d; want 3 ops, copy %d fetch 300", len(p.Ops), p.Copy, p.Fetch, n-300)
	}
	checkPlan(t, p, want, nil, active)
}
