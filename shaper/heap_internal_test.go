package shaper

import (
	"math/rand/v2"
	"slices"
	"testing"
)

type heapItem struct{ v, idx int }

// TestIndexHeap checks the heap against a sorted slice over random pushes,
// pops, removals and fixes, and that every element knows its index.
func TestIndexHeap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	h := newIndexHeap(func(a, b *heapItem) bool { return a.v < b.v }, func(x *heapItem, i int) { x.idx = i })
	var in []*heapItem
	for step := range 20000 {
		switch op := rng.IntN(4); {
		case op < 2 || len(in) == 0:
			x := &heapItem{v: rng.IntN(1000)}
			h.Push(x)
			in = append(in, x)
		case op == 2:
			x := in[rng.IntN(len(in))]
			if got := h.Remove(x.idx); got != x || x.idx != -1 {
				t.Fatalf("step %d: Remove(%d) = %v (idx %d), want %v (idx -1)", step, x.idx, got, x.idx, x)
			}
			in = slices.DeleteFunc(in, func(y *heapItem) bool { return y == x })
		default:
			x := in[rng.IntN(len(in))]
			x.v = rng.IntN(1000)
			h.Fix(x.idx)
		}
		for i, x := range h.s {
			if x.idx != i {
				t.Fatalf("step %d: element at %d says index %d", step, i, x.idx)
			}
		}
	}
	var got []int
	for h.Len() > 0 {
		got = append(got, h.Pop().v)
	}
	if !slices.IsSorted(got) || len(got) != len(in) {
		t.Fatalf("popped %d elements, sorted %v; want %d sorted", len(got), slices.IsSorted(got), len(in))
	}
}
