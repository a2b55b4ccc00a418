package shaper

// indexHeap is a binary min-heap of T ordered by less, which tells each
// element its index as it moves (setIndex), so that an element can be
// fixed or removed in O(log n) from wherever it is. The one heap type of
// the package: the link's fair orders and refill times, and a Loop's due
// tasks. It allocates only as it grows. Not safe for concurrent use.
type indexHeap[T any] struct {
	s        []T
	less     func(a, b T) bool
	setIndex func(x T, i int) // i is -1 once x leaves the heap
}

func newIndexHeap[T any](less func(a, b T) bool, setIndex func(x T, i int)) indexHeap[T] {
	return indexHeap[T]{less: less, setIndex: setIndex}
}

// Len returns the number of elements.
func (h *indexHeap[T]) Len() int { return len(h.s) }

// Peek returns the least element; the heap must not be empty.
func (h *indexHeap[T]) Peek() T { return h.s[0] }

// Push adds x.
func (h *indexHeap[T]) Push(x T) {
	h.s = append(h.s, x)
	h.setIndex(x, len(h.s)-1)
	h.up(len(h.s) - 1)
}

// Pop removes and returns the least element; the heap must not be empty.
func (h *indexHeap[T]) Pop() T { return h.Remove(0) }

// Remove removes and returns the element at index i.
func (h *indexHeap[T]) Remove(i int) T {
	n := len(h.s) - 1
	x := h.s[i]
	last := h.s[n]
	var zero T
	h.s[n] = zero
	h.s = h.s[:n]
	if i != n {
		h.s[i] = last
		if !h.down(i) {
			h.up(i)
		}
	}
	h.setIndex(x, -1)
	return x
}

// Fix restores the order after the element at index i changed.
func (h *indexHeap[T]) Fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

// up moves the element at j towards the root to its place, shifting the
// ones it passes down: one index update per level, not a swap.
func (h *indexHeap[T]) up(j int) {
	x := h.s[j]
	for j > 0 {
		i := (j - 1) / 2
		if !h.less(x, h.s[i]) {
			break
		}
		h.s[j] = h.s[i]
		h.setIndex(h.s[j], j)
		j = i
	}
	h.s[j] = x
	h.setIndex(x, j)
}

// down moves the element at i0 towards the leaves to its place and
// reports whether it moved.
func (h *indexHeap[T]) down(i0 int) bool {
	x := h.s[i0]
	i, n := i0, len(h.s)
	for {
		j := 2*i + 1
		if j >= n {
			break
		}
		if r := j + 1; r < n && h.less(h.s[r], h.s[j]) {
			j = r
		}
		if !h.less(h.s[j], x) {
			break
		}
		h.s[i] = h.s[j]
		h.setIndex(h.s[i], i)
		i = j
	}
	h.s[i] = x
	h.setIndex(x, i)
	return i > i0
}
