package proxy

import (
	"runtime"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// The shaping loops ([shaper.Loop]) serve the small grants of shaped
// directions, each from one goroutine with one timer: one loop per P at
// New (GOMAXPROCS, before sluice's cores setting may lower it), a conn's
// directions in the loop its id picks. One loop alone fell behind at
// 50 × 10 MB/s on two cores (0.25% short, 100 ms windows down to 0.77);
// two were exact, for the same CPU at 50 × 1 MB/s, and two taking turns on
// one P were exact too. The loop decides when; this file is its I/O
// driver: what a direction does when its turn comes.
//
// A pump hands its direction to a loop (runInLoop) once it holds bytes
// read ahead, in a pipe or a buffer, under its own gate, one link, or both
// (not several links, not an MP4 plan). The loop's Serve takes the gate's
// grants with Gate.TryTake, and asks the link with Member.Ask, whose grant
// comes in the conn's fair turn through Loop.Grant. Each link is driven by
// one loop (Server.newLink), which makes the link's grants when its own
// timer fires and serves its members' directions: the loop wakes then,
// not the pump, nor a timer goroutine of the link's. Serve moves each
// grant out of the holder, topping it up from src, until something needs
// a wait the loop does not do: src has nothing queued, dst has no room,
// an error or the end of src. It then hands the direction back, and the
// pump waits in the netpoller as before and hands it in again once it
// moves. A SetLimit or an abort makes the pump recall its direction at
// once. While the loop has the direction, the pump's goroutine is parked
// and touches none of its state: ownership passes with the hand-in and the
// hand-back (a channel send each), so the pump's fields need no lock.

// loopMaxGrant is the largest grant the loop serves: the grants read ahead
// (at most a quarter of aheadSize). Larger grants are few enough a second
// that their wake-ups cost little, and are moved by the pump itself.
const loopMaxGrant = aheadSize / 4

// loopTurn bounds the grants one pump gets per turn of the loop, so that a
// pump with tokens saved up cannot hold the loop long.
const loopTurn = 16

// loopState is a pump's while a loop has its direction: the loop's Task.
// A pump makes it at its first hand-in.
type loopState struct {
	shaper.LoopSlot
	p       *pump
	back    chan struct{} // the loop hands the direction back
	granted func(int)     // the notify of m.Ask, bound once
	loop    *shaper.Loop  // the loop the conn's id picks, or its link's
	gap     time.Duration // between grants of its own gate's
	queued  int           // bytes known to be queued on src, read-ahead included
	err     error         // what ended the loop's moves

	gate  *shaper.Gate   // p.gate at the hand-in: another one hands the direction back
	g     *shaper.Gate   // the own gate grants come from, or nil
	m     *shaper.Member // the link's seat, or nil
	grant int            // granted and not yet moved
	asked bool           // m's grant is asked for and has not come
	held  int            // g's tokens held while m's grant is asked for
}

// Interface guard.
var _ shaper.Task = (*loopState)(nil)

// loopable reports whether the direction may be handed to a loop now: it
// holds bytes read ahead, under its own gate, one link or both (no MP4
// plan), in grants the loop serves.
func (p *pump) loopable() bool {
	return len(p.c.srv.loops) > 0 && (p.taken != nil || len(p.members()) == 1) && len(p.members()) <= 1 &&
		p.pacer == nil && (p.held != nil || p.ahead != nil) && p.chunk.Load() <= loopMaxGrant
}

// runInLoop hands the direction to the loop with queued bytes known to be
// queued (read-ahead bytes included) and waits until the loop hands it
// back. It returns how many bytes are known to be queued then, and the
// error that ended the loop's moves, if any.
func (p *pump) runInLoop(queued int) (int, error) {
	lp := p.lp
	if lp == nil { // not on every idle conn
		loops := p.c.srv.loops
		lp = &loopState{p: p, back: make(chan struct{}, 1), loop: loops[p.c.id%uint64(len(loops))]}
		if p.seats != nil {
			lp.loop = p.seats.loop // grants come from there
		}
		lp.granted = func(n int) { lp.loop.Grant(lp, n) }
		p.lp = lp
	}
	lp.queued, lp.err = queued, nil
	lp.gate, lp.g, lp.m = p.gate.Load(), p.taken, nil
	var changed <-chan struct{} // a nil gate's change: the loop sees the new gate
	if lp.gate != nil {
		changed = lp.gate.Changed()
	}
	if len(p.members()) == 1 {
		lp.m = p.members()[0]
	}
	lp.gap = 0
	if lp.g != nil {
		lp.gap = shaper.GrantGap(p.chunk.Load(), lp.g.Limit().Rate) // a change hands the direction back
	}
	lp.loop.Add(lp)
	select {
	case <-lp.back:
	case <-changed:
		lp.loop.Recall(lp)
		<-lp.back
	case <-p.c.Done():
		lp.loop.Recall(lp)
		<-lp.back
	}
	if lp.g != nil {
		lp.g.EndWait()
	}
	return lp.queued, lp.err
}

// HandBack gives the direction back to its pump, with the grant it holds
// and has not moved given back to the gate and the link, and an empty
// holder given back too: the pump may now wait long for src.
func (lp *loopState) HandBack() {
	p := lp.p
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
	lp.back <- struct{}{}
}

// Granted takes the link's grant of n bytes asked for: the gate's tokens
// held beyond it go back.
func (lp *loopState) Granted(n int) {
	lp.asked = false
	lp.p.inLink.Store(false)
	if lp.g != nil && n < lp.held {
		lp.g.Refund(lp.held - n)
	}
	lp.grant, lp.held = n, 0
}

// Serve gives the pump up to loopTurn grants (one under a link), in a
// loop that serves served directions, and says what the loop does next.
func (lp *loopState) Serve(served int) shaper.Next {
	p := lp.p
	// One link grant a turn: a link with no one waiting grants an ask at
	// once, and a pump that asked again within its turn would take the
	// tokens meant for the others the loop has yet to serve, whose grants
	// it just moved. It asks again after them.
	turn := loopTurn
	if lp.m != nil {
		turn = 1
	}
	for range turn {
		if lp.grant == 0 {
			chunk := p.chunk.Load()
			if p.gate.Load() != lp.gate || chunk > loopMaxGrant {
				return shaper.ServeBack // a limit the hand-in did not see
			}
			size := int(chunk)
			if lp.g == nil {
				size = p.linkGrant(size)
			}
			if lp.queued < size { // fewer counted than a grant
				n, err := p.recount()
				if err == nil {
					lp.queued = max(lp.queued, n)
				}
				if lp.queued == 0 {
					lp.err = err // the pump's own peek sees an end or error again
					p.dropAhead()
					return shaper.ServeBack
				}
			}
			n := min(lp.queued, size)
			if lp.g != nil {
				var wait time.Duration
				if n, wait = lp.g.TryTake(n); n == 0 {
					// Late on a time grid shared by all waits, as a
					// Gate's own waits end: many pumps come due
					// together, and the loop wakes once for them.
					return shaper.ServeAfter(wait, lp.gap)
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
					return shaper.ServeBack // which refunds the tokens held
				case got == 0:
					lp.asked = true
					p.inLink.Store(true)
					return shaper.ServePark
				}
				lp.Granted(got)
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
		lp.grant = n - w // HandBack refunds it
		lp.queued -= w
		if err != nil || full || w < n {
			if w < n && !full && err == nil {
				// The holder had fewer bytes than counted (src ended,
				// or its pipe ran out of slots) and is empty now:
				// the pump counts anew.
				lp.queued = 0
			}
			lp.err = err
			return shaper.ServeBack
		}
	}
	return shaper.ServeAgain
}

// newLoops makes the Server's shaping loops: n, or one per P for 0, or
// none for a negative n.
func newLoops(n int, clock shaper.Clock) []*shaper.Loop {
	if n == 0 {
		n = max(1, runtime.GOMAXPROCS(0))
	}
	loops := make([]*shaper.Loop, max(n, 0))
	for i := range loops {
		loops[i] = shaper.NewLoop(clock)
	}
	return loops
}
