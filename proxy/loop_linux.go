package proxy

import (
	"container/heap"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// The shaping loops serve the small grants of shaped directions, each from
// one goroutine with one timer, as an event loop would: one loop per P
// at start (GOMAXPROCS, before sluice's cores setting may lower it), a
// conn's directions in the loop its id picks. One loop alone fell behind
// at 50 × 10 MB/s on two cores (0.25% short, 100 ms windows down to 0.77);
// two were exact, for the same CPU at 50 × 1 MB/s, and two taking turns on
// one P were exact too.
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
// read ahead, in a pipe or a buffer, under its own gate, one link, or both
// (not several links, not an MP4 plan). The loop takes the gate's grants
// with Gate.TryTake, and asks the link with Member.Ask, whose grant comes
// in the conn's fair turn as a call of linkGranted. Each link is driven
// by one loop (newDrivenLink), which makes the link's grants when its own
// timer fires and serves its members' directions: the loop wakes then,
// not the pump, nor a timer goroutine of the link's. It moves
// each grant out of the holder, topping it up from src, until something
// needs a wait the loop does not do: src has nothing queued, dst has no
// room, an error or the end of src. It then hands the direction back, and
// the pump waits in the netpoller as before and hands it in again once
// it moves. A SetLimit or an abort makes the pump ask for its direction
// back at once. While the loop has the direction, the pump's goroutine is
// parked and touches none of its state: ownership passes with the
// hand-in and the hand-back (a channel send each), so the pump's fields
// need no lock.

// loopMaxGrant is the largest grant the loop serves: the grants read ahead
// (at most a quarter of aheadSize). Larger grants are few enough a second
// that their wake-ups cost little, and are moved by the pump itself.
const loopMaxGrant = aheadSize / 4

// loopTurn bounds the grants one pump gets per turn of the loop, so that a
// pump with tokens saved up cannot hold the loop long.
const loopTurn = 16

type shapeLoop struct {
	mu      sync.Mutex
	running bool                       // a goroutine runs the loop
	asleep  bool                       // it waits for wakeAt (zero: for a kick only)
	wakeAt  time.Time                  //
	in      []*pump                    // handed in
	out     []*pump                    // asked back
	granted []linkGrant                // a link's grants
	links   map[*shaper.Link]time.Time // links it drives that need a Dispatch, and when
	kick    chan struct{}              // wakes it while asleep

	// The loop goroutine's own (a goroutine that ends passes them on
	// under mu).
	due     pumpHeap
	timer   *time.Timer // made at the first wait
	timerAt time.Time   // what timer is armed for; zero once fired or stopped
	parked  int         // directions waiting for a link's grant, in no heap
}

// linkGrant is a grant a link made to a pump the loop serves.
type linkGrant struct {
	p *pump
	n int
}

// loops are the process's shaping loops, one per P: a conn's directions
// go to one of them by its id, or under a link to the link's.
var loops = func() []*shapeLoop {
	ls := make([]*shapeLoop, max(1, runtime.GOMAXPROCS(0)))
	for i := range ls {
		ls[i] = &shapeLoop{kick: make(chan struct{}, 1), links: map[*shaper.Link]time.Time{}}
	}
	return ls
}()

// linksMade spreads links over the loops.
var linksMade atomic.Uint64

// newDrivenLink makes a link at ll whose timer is a shaping loop's: the
// loop dispatches the link's grants when its own timer fires, and serves
// at once the directions it has of the link's members. The link's members
// of a direction it may serve are handed to it. A link's timer of its own
// would wake a goroutine of its own every millisecond, and then the
// loops its grants went to.
func newDrivenLink(ll shaper.LinkLimit) (*shaper.Link, *shapeLoop) {
	sl := shaper.NewLink(ll, nil)
	l := loops[linksMade.Add(1)%uint64(len(loops))]
	sl.SetDriver(func(at time.Time) { l.drive(sl, at) })
	return sl, l
}

// drive is sl's driver (shaper.Link.SetDriver): sl needs a Dispatch at at,
// or none if at is zero. sl's lock is held.
func (l *shapeLoop) drive(sl *shaper.Link, at time.Time) {
	l.mu.Lock()
	if at.IsZero() { // nobody waits on sl
		delete(l.links, sl)
		l.mu.Unlock()
		return
	}
	if cur, ok := l.links[sl]; !ok || at.Before(cur) {
		l.links[sl] = at
	}
	wake := l.asleep && (l.wakeAt.IsZero() || at.Before(l.wakeAt))
	l.wakeLocked(wake)
}

// wakeLocked releases l.mu, and starts the loop's goroutine if none runs,
// or wakes it if wake.
func (l *shapeLoop) wakeLocked(wake bool) {
	start := !l.running
	l.running = true
	l.mu.Unlock()
	switch {
	case start:
		go l.run()
	case wake:
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// loopable reports whether the direction may be handed to a loop now: it
// holds bytes read ahead, under its own gate, one link or both (no MP4
// plan), in grants the loop serves.
func (p *pump) loopable() bool {
	return !loopOff.Load() && (p.taken != nil || len(p.members) == 1) && len(p.members) <= 1 &&
		p.pacer == nil && (p.held != nil || p.ahead != nil) && p.chunk.Load() <= loopMaxGrant
}

// loopOff turns the loop off for tests of the pump's own moves.
var loopOff atomic.Bool

// runInLoop hands the direction to the loop with queued bytes known to be
// queued (read-ahead bytes included) and waits until the loop hands it
// back. It returns how many bytes are known to be queued then, and the
// error that ended the loop's moves, if any.
func (p *pump) runInLoop(queued int) (int, error) {
	lp := p.lp
	if lp == nil { // not on every idle conn
		lp = &loopState{back: make(chan struct{}, 1), peekNow: p.peekNow, granted: p.linkGranted,
			loop: loops[p.c.id%uint64(len(loops))], idx: -1}
		if p.linkLoop != nil {
			lp.loop = p.linkLoop // grants come from there
		}
		p.lp = lp
	}
	lp.queued, lp.err = queued, nil
	lp.gate, lp.g, lp.m = p.gate.Load(), p.taken, nil
	var changed <-chan struct{} // a nil gate's change: the loop sees the new gate
	if lp.gate != nil {
		changed = lp.gate.Changed()
	}
	if len(p.members) == 1 {
		lp.m = p.members[0]
	}
	lp.gap = 0
	if lp.g != nil {
		lp.gap = loopGap(p.chunk.Load(), lp.g.Limit().Rate) // a change hands the direction back
	}
	l := lp.loop
	l.add(&l.in, p)
	select {
	case <-lp.back:
	case <-changed:
		l.add(&l.out, p)
		<-lp.back
	case <-p.c.Done():
		l.add(&l.out, p)
		<-lp.back
	}
	if lp.g != nil {
		lp.g.EndWait()
	}
	return lp.queued, lp.err
}

// linkGranted is the notify of the loop's Member.Ask: the link granted n
// bytes. The link's lock is held: it only queues the grant for the loop.
func (p *pump) linkGranted(n int) {
	l := p.lp.loop
	l.mu.Lock()
	l.granted = append(l.granted, linkGrant{p, n})
	l.wakeLocked(l.asleep)
}

// loopServed is how many directions the loop serves now.
func loopServed() int64 { return loopCount.Load() }

// loopCount is how many directions the loops serve; loopHandIns counts
// hand-ins, for tests.
var loopCount, loopHandIns atomic.Int64

// loopWakes counts the loops' timer wake-ups, for tests.
var loopWakes atomic.Int64

// loopLinkRepeats counts the turns in which a pump under a link went on
// after moving a grant, for tests: none, by the one-grant-a-turn rule
// (loopServe).
var loopLinkRepeats atomic.Int64

// add puts p on the loop's list to hand in (&l.in) or ask back (&l.out),
// and wakes the loop, or starts it.
func (l *shapeLoop) add(list *[]*pump, p *pump) {
	if list == &l.in {
		loopHandIns.Add(1)
	}
	l.mu.Lock()
	*list = append(*list, p)
	l.wakeLocked(l.asleep)
}

// run is the loop's goroutine. It ends when it serves no pump, drives no
// link that needs a Dispatch, and none is handed in; the next hand-in or
// drive starts it again.
func (l *shapeLoop) run() {
	var in, out []*pump
	var granted []linkGrant
	var due []*shaper.Link
	for {
		// The links due first: their grants to this loop's pumps are
		// served in this turn.
		now := time.Now()
		l.mu.Lock()
		l.asleep = false
		for sl, at := range l.links {
			if !at.After(now) {
				due = append(due, sl)
				delete(l.links, sl)
			}
		}
		l.mu.Unlock()
		for _, sl := range due {
			sl.Dispatch()
		}
		clear(due)
		due = due[:0]

		l.mu.Lock()
		in, l.in = l.in, in[:0]
		out, l.out = l.out, out[:0]
		granted, l.granted = l.granted, granted[:0]
		if len(in) == 0 && len(out) == 0 && len(granted) == 0 && len(l.due) == 0 && l.parked == 0 && len(l.links) == 0 {
			// The loop's own fields pass to the next goroutine under mu.
			if l.timer != nil {
				l.timer.Stop()
				l.timerAt = time.Time{}
			}
			l.running = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()

		for _, p := range in {
			loopCount.Add(1)
			p.lp.at = now
			heap.Push(&l.due, p)
		}
		for _, g := range granted {
			// A grant the loop withdrew meanwhile (see out) is the
			// withdrawal's: Withdraw returned it.
			if p := g.p; p.lp.asked {
				p.gotLink(g.n)
				l.parked--
				p.lp.at = now
				heap.Push(&l.due, p)
			}
		}
		for _, p := range out {
			switch {
			case p.lp.idx >= 0:
				heap.Remove(&l.due, p.lp.idx)
				l.handBack(p)
			case p.lp.asked:
				l.parked--
				l.handBack(p)
			} // else it was handed back already
		}
		clear(in)
		clear(out)
		clear(granted)
		for len(l.due) > 0 && !l.due[0].lp.at.After(now) {
			p := l.due[0]
			switch at, next := p.loopServe(len(l.due) + l.parked); next {
			case serveAt:
				p.lp.at = at
				heap.Fix(&l.due, 0)
			case serveParked:
				heap.Pop(&l.due)
				l.parked++
			default:
				heap.Pop(&l.due)
				l.handBack(p)
			}
		}
		l.sleep()
	}
}

// sleep waits until the first pump or link is due, or for a kick: a
// hand-in, an ask-back, a link's grant, or an earlier drive. It returns at
// once if one came while the loop was awake.
func (l *shapeLoop) sleep() {
	l.mu.Lock()
	if len(l.in) > 0 || len(l.out) > 0 || len(l.granted) > 0 {
		l.mu.Unlock()
		return
	}
	var wake time.Time
	if len(l.due) > 0 {
		wake = l.due[0].lp.at
	}
	for _, at := range l.links {
		if wake.IsZero() || at.Before(wake) {
			wake = at
		}
	}
	if wake.IsZero() && l.parked == 0 || !wake.IsZero() && !wake.After(time.Now()) {
		l.mu.Unlock()
		return // to end, unless handed more meanwhile; or due already
	}
	l.asleep, l.wakeAt = true, wake
	l.mu.Unlock()
	if wake.IsZero() {
		<-l.kick // parked pumps wait for their links' grants
		return
	}
	if !wake.Equal(l.timerAt) {
		// Exact: the pumps' times are on the grid. Not re-armed for the
		// same time: a timer moved earlier wakes the netpoller.
		d := time.Until(wake)
		if l.timer == nil {
			l.timer = time.NewTimer(d)
		} else {
			l.timer.Reset(d)
		}
		l.timerAt = wake
	}
	select {
	case <-l.kick:
	case <-l.timer.C:
		l.timerAt = time.Time{}
		loopWakes.Add(1)
	}
}

// handBack gives the direction back to its pump, with the grant it holds
// and has not moved given back to the gate and the link, and an empty
// holder given back too: the pump may now wait long for src.
func (l *shapeLoop) handBack(p *pump) {
	lp := p.lp
	if lp.asked {
		lp.asked = false
		p.inLink.Store(false)
		if got := lp.m.Withdraw(); got > 0 {
			lp.m.Refund(got)
		}
	}
	if lp.g != nil {
		lp.g.Refund(lp.held)
	}
	lp.held = 0
	p.refund(lp.grant)
	lp.grant = 0
	if p.aheadEmpty() {
		p.dropAhead()
	}
	loopCount.Add(-1)
	lp.back <- struct{}{}
}

// gotLink takes the link's grant of n bytes asked for: the gate's tokens
// held beyond it go back.
func (p *pump) gotLink(n int) {
	lp := p.lp
	lp.asked = false
	p.inLink.Store(false)
	if lp.g != nil && n < lp.held {
		lp.g.Refund(lp.held - n)
	}
	lp.grant, lp.held = n, 0
}

// peekNow is the RawConn.Read callback of the loop's peek: readable,
// without waiting.
func (p *pump) peekNow(fd uintptr) bool {
	p.readable(fd)
	return true
}

// What loopServe tells the loop to do with a pump.
const (
	serveAt     = iota // serve it again at the time returned
	serveParked        // keep it out of the heap until its link grants
	serveBack          // hand it back
)

// loopServe gives the pump up to loopTurn grants (one under a link), in a
// loop that serves served pumps. It returns what to do with it next, and
// when to serve it again.
func (p *pump) loopServe(served int) (time.Time, int) {
	lp := p.lp
	// One link grant a turn: a link with no one waiting grants an ask at
	// once, and a pump that asked again within its turn would take the
	// tokens meant for the others the loop has yet to serve, whose grants
	// it just moved. It asks again after them.
	turn := loopTurn
	if lp.m != nil {
		turn = 1
	}
	for i := range turn {
		if i > 0 && lp.m != nil {
			loopLinkRepeats.Add(1) // the bound above broken
		}
		if lp.grant == 0 {
			if lp.queued == 0 {
				// Nothing counted is left, so the holder is empty:
				// count anew, without waiting.
				p.avail, p.rerr = 0, nil
				if err := p.srcRaw.Read(lp.peekNow); err != nil || p.avail == 0 {
					lp.err = err // the pump's own peek sees an end or error again
					p.dropAhead()
					return time.Time{}, serveBack
				}
				lp.queued = p.avail
			}
			chunk := p.chunk.Load()
			if p.gate.Load() != lp.gate || chunk > loopMaxGrant {
				return time.Time{}, serveBack // a limit the hand-in did not see
			}
			size := int(chunk)
			if lp.g == nil {
				size = p.linkGrant(size)
			}
			n := min(lp.queued, size)
			if lp.g != nil {
				var wait time.Duration
				if n, wait = lp.g.TryTake(n); n == 0 {
					// Late on a time grid shared by all waits, as a
					// Gate's own waits end: many pumps come due
					// together, and the loop wakes once for them.
					return loopGrid(time.Now().Add(wait), loopStep(lp.gap, served)), serveAt
				}
			}
			if lp.m != nil {
				upTo := n // a link may grant a key that fell behind more, within the holder
				if lp.g == nil {
					upTo = min(lp.queued, aheadSize)
				}
				lp.held = n // the gate's tokens, kept while the link decides
				got, err := lp.m.Ask(n, upTo, lp.granted)
				switch {
				case err != nil:
					lp.err = err
					return time.Time{}, serveBack // which refunds the tokens held
				case got == 0:
					lp.asked = true
					p.inLink.Store(true)
					return time.Time{}, serveParked
				}
				p.gotLink(got)
				n = got
			}
			lp.grant = n
		}
		n := lp.grant
		p.rawNoWait = true
		w, err := p.fromAhead(n, lp.queued)
		p.rawNoWait = false
		full := err == nil && w < n && !p.aheadEmpty() // the rest stays held
		if w > 0 {
			p.moved(int64(w))
		}
		lp.grant = n - w // handBack refunds it
		lp.queued -= w
		if err != nil || full || w < n {
			if w < n && !full && err == nil {
				// The holder had fewer bytes than counted (src ended,
				// or its pipe ran out of slots) and is empty now:
				// the pump counts anew.
				lp.queued = 0
			}
			lp.err = err
			return time.Time{}, serveBack
		}
	}
	return time.Now(), serveAt
}

// The loop serves a pump on a time grid: a pump due at t is served at the
// next multiple of its step, a power of two of nanoseconds. Pumps then
// come due together and the loop wakes once for them all: at 1 MB/s with
// 10 KB grants, at most 119 times a second however many connections it
// serves. A busy gate keeps the tokens that accrue meanwhile
// (shaper.MaxCatchUp), so rates stay exact; a grant moves by less than the
// step, so the step bounds how uneven the flow is from one 100 ms window
// to the next (8.4 ms is 8.4%).
//
// Waking together only saves wake-ups when there are pumps to wake
// together: the step is the largest power of two at most the time between
// a pump's grants times the pumps the loop serves over loopBatch, and at
// most maxLoopStep. One pump alone (1 MB/s, 10 KB grants) is served
// within 1 ms of its time, as often as without a grid; eight or more, at
// 1 MB/s, on the 8.4 ms grid.
const (
	maxLoopStep = 1 << 23 // ns: 8.4 ms
	loopBatch   = 8
)

// loopGap is the time between grants of chunk bytes at rate bytes per
// second, in nanoseconds.
func loopGap(chunk, rate int64) int64 {
	if rate <= 0 {
		return 0
	}
	return chunk * int64(time.Second) / rate
}

// loopStep is the grid step for a pump with gap ns between grants in a
// loop that serves n pumps.
func loopStep(gap int64, n int) int64 {
	limit := min(gap*int64(n)/loopBatch, maxLoopStep)
	step := int64(1)
	for step*2 <= limit {
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
	p.lp.idx = len(*h)
	*h = append(*h, p)
}
func (h *pumpHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.lp.idx = -1
	return p
}
