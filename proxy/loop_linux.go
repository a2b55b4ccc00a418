package proxy

import (
	"container/heap"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The shaping loops serve the small grants of shaped directions, each from
// one goroutine with one timer, as an event loop would: one loop per P
// (GOMAXPROCS), a conn's directions in the loop its id picks. One loop
// alone fell behind at 50 × 10 MB/s on two cores (0.25% short, 100 ms
// windows down to 0.77); two were exact, for the same CPU at 50 × 1 MB/s.
//
// Why: a direction whose pump waits on its own gate wakes its goroutine for
// every grant, and at 1 MB/s a grant is 10 KB: a hundred wake-ups a second
// per connection. The Go scheduler wakes a thread, and often a second one
// to share the work, for each batch of them, and on the benchmark machine
// that cost more than the bytes did (docs/shaping.md). The loop wakes once
// per batch of due grants, whatever the number of connections, and moves
// each grant itself with non-blocking raw system calls.
//
// A pump hands its direction to the loop (runInLoop) once it holds bytes
// read ahead, in a pipe or a buffer, of a limit that is its own gate's only
// (no link, no MP4 plan); the loop takes grants with Gate.TryTake and moves
// them out of the holder, topping it up from src, until something needs a
// wait the loop does not do: src has nothing queued, dst has no room, an
// error or the end of src. It then hands the direction back, and the pump
// waits in the netpoller as before and hands it in again once it moves.
// A SetLimit or an abort makes the pump ask for its direction back at
// once. While the loop has the direction, the pump's goroutine is parked
// and touches none of its state: ownership passes with the hand-in and
// the hand-back (a channel send each), so the pump's fields need no lock.

// loopMaxGrant is the largest grant the loop serves: the grants read ahead
// (at most a quarter of aheadSize). Larger grants are few enough a second
// that their wake-ups cost little, and are moved by the pump itself.
const loopMaxGrant = aheadSize / 4

// loopTurn bounds the grants one pump gets per turn of the loop, so that a
// pump with tokens saved up cannot hold the loop long.
const loopTurn = 16

type shapeLoop struct {
	mu      sync.Mutex
	running bool    // a goroutine runs the loop; guarded by mu
	in      []*pump // handed in; guarded by mu
	out     []*pump // asked back; guarded by mu
	kick    chan struct{}

	// The loop goroutine's own (a goroutine that ends passes them on
	// under mu).
	due   pumpHeap
	timer *time.Timer // made at the first wait; armed for due[0]
}

// loops are the process's shaping loops, one per P: a conn's directions
// go to one of them by its id.
var loops = func() []*shapeLoop {
	ls := make([]*shapeLoop, max(1, runtime.GOMAXPROCS(0)))
	for i := range ls {
		ls[i] = &shapeLoop{kick: make(chan struct{}, 1)}
	}
	return ls
}()

// loopable reports whether the direction may be handed to the loop now:
// it holds bytes read ahead, under its own gate's limit only, in grants
// the loop serves.
func (p *pump) loopable() bool {
	return !loopOff.Load() && p.taken != nil && len(p.members) == 0 && p.pacer == nil &&
		(p.held != nil || p.ahead != nil) && p.chunk.Load() <= loopMaxGrant
}

// loopOff turns the loop off for tests of the pump's own moves.
var loopOff atomic.Bool

// runInLoop hands the direction to the loop with queued bytes known to be
// queued (read-ahead bytes included) and waits until the loop hands it
// back. It returns how many bytes are known to be queued then, and the
// error that ended the loop's moves, if any.
func (p *pump) runInLoop(queued int) (int, error) {
	if p.lp == nil { // not on every idle conn
		p.lp = &loopState{back: make(chan struct{}, 1), peekNow: p.peekNow, idx: -1}
	}
	g := p.taken
	changed := g.Changed()
	p.lp.queued, p.lp.err = queued, nil
	p.lp.step = loopStep(p.chunk.Load(), g.Limit().Rate) // a change hands the direction back
	l := loops[p.c.id%uint64(len(loops))]
	l.handIn(p)
	select {
	case <-p.lp.back:
	case <-changed:
		l.askBack(p)
		<-p.lp.back
	case <-p.c.Done():
		l.askBack(p)
		<-p.lp.back
	}
	g.EndWait()
	return p.lp.queued, p.lp.err
}

// loopServed is how many directions the loop serves now.
func loopServed() int64 { return loopCount.Load() }

// loopCount is how many directions the loops serve; loopHandIns counts
// hand-ins, for tests.
var loopCount, loopHandIns atomic.Int64

func (l *shapeLoop) handIn(p *pump) {
	loopHandIns.Add(1)
	l.mu.Lock()
	l.in = append(l.in, p)
	start := !l.running
	l.running = true
	l.mu.Unlock()
	if start {
		go l.run()
		return
	}
	l.poke()
}

func (l *shapeLoop) askBack(p *pump) {
	l.mu.Lock()
	l.out = append(l.out, p)
	l.mu.Unlock()
	l.poke()
}

func (l *shapeLoop) poke() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// run is the loop's goroutine. It ends when it serves no pump and none is
// handed in; the next hand-in starts it again.
func (l *shapeLoop) run() {
	var in, out []*pump
	for {
		l.mu.Lock()
		in, l.in = l.in, in[:0]
		out, l.out = l.out, out[:0]
		if len(in) == 0 && len(out) == 0 && len(l.due) == 0 {
			// The loop's own fields pass to the next goroutine under mu.
			if l.timer != nil {
				l.timer.Stop()
			}
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()

		now := time.Now()
		for _, p := range in {
			p.lp.at = now
			heap.Push(&l.due, p)
		}
		for _, p := range out {
			if p.lp.idx >= 0 {
				heap.Remove(&l.due, p.lp.idx)
				p.handBack()
			} // else it was handed back already
		}
		clear(in)
		clear(out)
		for len(l.due) > 0 && !l.due[0].lp.at.After(now) {
			p := l.due[0]
			if at, ok := p.loopServe(); ok {
				p.lp.at = at
				heap.Fix(&l.due, 0)
			} else {
				heap.Pop(&l.due)
				p.handBack()
			}
		}
		if len(l.due) == 0 {
			continue // to end, unless handed more meanwhile
		}
		d := time.Until(l.due[0].lp.at)
		if l.timer == nil {
			l.timer = time.NewTimer(d) // exact: the pumps' times are on the grid
		} else {
			l.timer.Reset(d)
		}
		select {
		case <-l.kick:
		case <-l.timer.C:
		}
	}
}

// handBack gives the direction back to its pump, with an empty holder
// given back too: the pump may now wait long for src.
func (p *pump) handBack() {
	if p.aheadEmpty() {
		p.dropAhead()
	}
	p.lp.back <- struct{}{}
}

// peekNow is the RawConn.Read callback of the loop's peek: readable,
// without waiting.
func (p *pump) peekNow(fd uintptr) bool {
	p.readable(fd)
	return true
}

// loopServe gives the pump up to loopTurn grants. It returns when to serve
// it next, or false to hand it back.
func (p *pump) loopServe() (time.Time, bool) {
	g := p.taken
	for range loopTurn {
		if p.lp.queued == 0 {
			// Nothing counted is left, so the holder is empty: count
			// anew, without waiting.
			p.avail, p.rerr = 0, nil
			if err := p.srcRaw.Read(p.lp.peekNow); err != nil || p.avail == 0 {
				p.lp.err = err // the pump's own peek sees an end or error again
				p.dropAhead()
				return time.Time{}, false
			}
			p.lp.queued = p.avail
		}
		want := min(p.lp.queued, int(p.chunk.Load()))
		n, wait := g.TryTake(want)
		if n == 0 {
			// Late on a time grid shared by all waits, as a Gate's own
			// waits end: many pumps come due together, and the loop
			// wakes once for them.
			return loopGrid(time.Now().Add(wait), p.lp.step), true
		}
		p.rawNoWait = true
		w, err := p.fromAhead(n, p.lp.queued)
		p.rawNoWait = false
		full := err == nil && w < n && !p.aheadEmpty() // the rest stays held
		if w > 0 {
			p.moved(int64(w))
		}
		if w < n {
			g.Refund(n - w)
		}
		p.lp.queued -= w
		if err != nil || full || w < n {
			if w < n && !full && err == nil {
				// The holder had fewer bytes than counted (src ended,
				// or its pipe ran out of slots) and is empty now:
				// the pump counts anew.
				p.lp.queued = 0
			}
			p.lp.err = err
			return time.Time{}, false
		}
	}
	return time.Now(), true
}

// The loop serves a pump on a time grid: a pump due at t is served at the
// next multiple of its step, the largest power of two of nanoseconds that
// is at most the time between its grants and at most maxLoopStep. Pumps
// then come due together and the loop wakes once for them all: at 1 MB/s
// with 10 KB grants, at most 120 times a second however many connections
// it serves. A busy gate keeps the tokens that accrue meanwhile
// (shaper.MaxCatchUp), so rates stay exact; a grant moves by less than the
// time between grants.
const maxLoopStep = 1 << 23 // ns: 8.4 ms

// loopStep is the grid step for grants of chunk bytes at rate bytes per
// second.
func loopStep(chunk, rate int64) int64 {
	if rate <= 0 {
		return 1
	}
	gap := min(chunk*int64(time.Second)/rate, maxLoopStep)
	step := int64(1)
	for step*2 <= gap {
		step *= 2
	}
	return step
}

// loopGrid returns the first multiple of step at or after t.
func loopGrid(t time.Time, step int64) time.Time {
	if rem := t.UnixNano() & (step - 1); rem != 0 {
		t = t.Add(time.Duration(step - rem))
	}
	return t
}

// pumpHeap orders the loop's pumps by when they are due.
type pumpHeap []*pump

func (h pumpHeap) Len() int           { return len(h) }
func (h pumpHeap) Less(i, j int) bool { return h[i].lp.at.Before(h[j].lp.at) }
func (h pumpHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].lp.idx, h[j].lp.idx = i, j
}
func (h *pumpHeap) Push(x any) {
	p := x.(*pump)
	loopCount.Add(1)
	p.lp.idx = len(*h)
	*h = append(*h, p)
}
func (h *pumpHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.lp.idx = -1
	loopCount.Add(-1)
	return p
}
