package admit

import (
	"sync"
	"sync/atomic"
)

// Hold is what an admitted connection holds while it lives: its slots of
// connection limits. The zero value holds nothing. A Hold is a small
// value; copies share what they hold, and only the first Release of any
// copy gives it back, so a late or repeated Release is harmless.
type Hold struct {
	h   *hold
	gen uint32
}

// IsZero reports whether h holds nothing.
func (h Hold) IsZero() bool { return h.h == nil }

// Release gives back the connection slots; a connection queued on one
// gets it. Only the first call of a Hold (or of any copy) does anything.
func (h Hold) Release() {
	if h.h == nil || !h.h.gen.CompareAndSwap(h.gen, h.gen+1) {
		return
	}
	h.h.release()
	h.h.put()
}

// hold is the record behind a Hold, reused once released: gen tells its
// lives apart.
type hold struct {
	gen   atomic.Uint32
	n     uint8
	qi    int8        // index in taken of the slot a queued connection waits for, or -1
	qslot atomic.Bool // that slot was handed over
	taken [maxChecks]taken
}

// taken is what an admission took from one limit.
type taken struct {
	ls                 *limitState
	sh                 *limitShard // the key's shard; nil for a ByGlobal limit
	idx                int32       // the key's cell in sh
	slot, rate, window bool
	sref               *sharedRef // a shared limit's key; nil otherwise
}

var holds = sync.Pool{New: func() any { return new(hold) }}

func newHold() *hold {
	h := holds.Get().(*hold)
	h.n, h.qi = 0, -1
	h.qslot.Store(false)
	return h
}

func (h *hold) put() {
	clear(h.taken[:h.n]) // drop the pointers
	h.n = 0
	holds.Put(h)
}

// handle returns the Hold of h's current life.
func (h *hold) handle() Hold { return Hold{h: h, gen: h.gen.Load()} }

func (h *hold) add(tk taken) { h.taken[h.n] = tk; h.n++ }

// release gives back the slots taken, and the queued one if handed over.
func (h *hold) release() {
	for i, tk := range h.taken[:h.n] {
		if tk.slot || (i == int(h.qi) && h.qslot.Load()) {
			tk.ls.release(tk)
			if tk.sref != nil {
				tk.sref.s.AddConns(tk.sref.key, -1)
			}
		}
	}
}

// Waiter is a queued connection's place in a limit's queue.
type Waiter struct {
	ready   chan struct{}
	hold    Hold
	tk      taken          // the limit and key it waits on
	refs    [maxChecks]ref // the keys its admission took from, as hold.taken
	granted bool           // guarded by the queue's lock
}

// Ready is closed once the connection has its slot.
func (w *Waiter) Ready() <-chan struct{} { return w.ready }

// Hold returns what the connection holds, its slot included: valid once
// Ready is closed.
func (w *Waiter) Hold() Hold { return w.hold }

// grant hands w the slot it waits for. Requires its queue's lock.
func (w *Waiter) grant() {
	w.granted = true
	w.hold.h.qslot.Store(true)
	if r := w.tk.sref; r != nil {
		r.s.AddConns(r.key, 1)
	}
	close(w.ready)
}

// Cancel gives up waiting: it reports true if the connection was still
// waiting, and gives back everything its admission took; false if it was
// granted its slot meanwhile (the caller then holds Hold and goes on).
func (w *Waiter) Cancel() bool {
	mu := w.tk.ls.queueLock(w.tk)
	mu.Lock()
	if w.granted {
		mu.Unlock()
		return false
	}
	w.tk.ls.unqueue(w.tk, w)
	mu.Unlock()
	w.refund()
	return true
}

// refund gives back everything the admission took: slots, and the
// rates' and windows' counts.
func (w *Waiter) refund() {
	h := w.hold
	if !h.h.gen.CompareAndSwap(h.gen, h.gen+1) {
		return
	}
	h.h.release()
	for i, tk := range h.h.taken[:h.h.n] {
		tk.ls.undo(tk, w.refs[i])
	}
	h.h.put()
}
