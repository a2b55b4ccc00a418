package mp4probe

import "sync/atomic"

// Budget bounds the moov and moof bytes that the Observers sharing it
// buffer at once, so many connections each starting a large movie cannot
// together hold unbounded memory. An Observer that would go over it gives
// the body up (FallbackBusy): its bytes go at the normal limits. Safe for
// concurrent use; a nil *Budget is unbounded.
type Budget struct {
	left atomic.Int64
}

// NewBudget returns a Budget of n bytes.
func NewBudget(n int64) *Budget {
	b := &Budget{}
	b.left.Store(n)
	return b
}

// Left returns the bytes not held now.
func (b *Budget) Left() int64 {
	if b == nil {
		return -1
	}
	return b.left.Load()
}

func (b *Budget) take(n int64) bool {
	if b == nil {
		return true
	}
	for {
		left := b.left.Load()
		if left < n {
			return false
		}
		if b.left.CompareAndSwap(left, left-n) {
			return true
		}
	}
}

func (b *Budget) give(n int64) {
	if b != nil && n > 0 {
		b.left.Add(n)
	}
}
