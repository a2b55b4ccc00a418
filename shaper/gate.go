// Package shaper holds sluice's token buckets: a [Gate] grants the bytes one
// direction of one connection may move, at a [Limit] that can change at any
// time, on a [Clock] that tests replace with a fake.
//
// # Model
//
// A Gate is a token bucket with one token per byte. It holds at most Burst
// tokens and fills continuously at Rate tokens per second; a new Gate starts
// full. [Gate.Take] waits until min(n, Burst) tokens are present, removes
// them and returns that count: a grant. The caller moves at most that many
// bytes and gives back what it did not move with [Gate.Refund]. Over any
// interval of length t a Gate therefore grants at most Burst + Rate×t bytes,
// and exactly that much to a caller that always asks.
//
// Burst is the largest grant and the most a quiet connection can save up.
// sluice's default Burst is one chunk (8 KiB): after a pause a connection
// gets one chunk at once, then the rate. No hidden extra second of credit.
//
// On the real clock a Take that must wait ends on a time grid shared by
// all Gates, up to half its wait and at most [MaxSlack] late, so that many
// connections' waits end together (see [Clock]). A busy caller keeps the
// tokens that accrue meanwhile, so rates stay exact; only the instants of
// grants move. A fake clock's waits end exactly.
//
// Arithmetic is in integers, exact to the byte and the nanosecond: the
// bucket counts nano-bytes, so refill and wait times carry no rounding
// drift at any rate from 1 B/s to many GiB/s.
//
// Typical usage, one Gate per direction of a connection:
//
//	g := shaper.NewGate(shaper.Limit{Rate: 1 << 20, Burst: 8192}, nil) // 1 MiB/s
//	for {
//		n, err := g.Take(ctx, 8192) // blocks until tokens are there
//		if err != nil {
//			return err // ctx ended
//		}
//		moved, err := move(n) // move at most n bytes
//		g.Refund(n - moved)  // hand back what was not used
//		...
//	}
//
// and from anywhere, at any time: g.SetLimit(shaper.Limit{Rate: 2 << 20, Burst: 8192}).
package shaper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Limit is a byte rate and a burst. The zero Limit means no limit.
type Limit struct {
	// Rate is in bytes per second. Zero means unlimited; negative is
	// invalid.
	Rate int64
	// Burst is the bucket's size in bytes: the largest grant and the most
	// that can be saved up. With a positive Rate it must be in
	// [1, MaxBurst]; zero then means DefaultBurst.
	Burst int64
}

// Bounds of a Limit.
const (
	DefaultBurst = 8192
	MaxBurst     = 1 << 30
	// MaxRate keeps nano-byte arithmetic within int64: 1 TiB/s.
	MaxRate = 1 << 40
)

// ErrBadLimit is wrapped by errors about an invalid [Limit].
var ErrBadLimit = errors.New("shaper: invalid limit")

// Unlimited reports whether l imposes no limit.
func (l Limit) Unlimited() bool { return l.Rate == 0 }

// Validate reports whether l is usable, wrapping [ErrBadLimit] if not.
func (l Limit) Validate() error {
	switch {
	case l.Rate < 0 || l.Rate > MaxRate:
		return fmt.Errorf("%w: rate %d B/s outside [0, %d]", ErrBadLimit, l.Rate, int64(MaxRate))
	case l.Burst < 0 || l.Burst > MaxBurst:
		return fmt.Errorf("%w: burst %d B outside [0, %d]", ErrBadLimit, l.Burst, int64(MaxBurst))
	}
	return nil
}

func (l Limit) normalize() Limit {
	if l.Rate != 0 && l.Burst == 0 {
		l.Burst = DefaultBurst
	}
	return l
}

const nano = int64(time.Second) // nano-bytes per byte

// Gate grants bytes at a Limit. It is safe for concurrent use: Take calls
// are served one at a time, while SetLimit, Refund and Stats may come from
// any goroutine. A Gate holds no goroutine; its only timer exists while a
// Take waits, and is reused.
type Gate struct {
	clock Clock

	takeMu sync.Mutex // serializes Take: one waiter, one timer

	mu        sync.Mutex
	lim       Limit
	b         bucket        // at lim; guarded by mu
	changed   chan struct{} // closed and replaced by SetLimit; guarded by mu
	granted   int64         // bytes granted minus refunds
	waited    time.Duration
	waiting   bool      // a Take is waiting for tokens
	waitStart time.Time // when a TryTake wait began; zero for Take's waits
	lastGrant time.Time // when Take last granted tokens

	timer Timer // guarded by takeMu
	wake  <-chan time.Time

	unlimited atomic.Bool // mirrors lim.Rate == 0 for lock-free checks
}

// NewGate returns a full Gate at l, on clock (nil means the real clock). It
// panics if l is invalid; check it first with [Limit.Validate].
func NewGate(l Limit, clock Clock) *Gate {
	if err := l.Validate(); err != nil {
		panic(err)
	}
	if clock == nil {
		clock = realClock{}
	}
	l = l.normalize()
	g := &Gate{
		clock:   clock,
		lim:     l,
		b:       bucket{rate: l.Rate, burst: l.Burst, nt: l.Burst * nano, last: clock.Now()},
		changed: make(chan struct{}),
	}
	g.unlimited.Store(l.Rate == 0)
	return g
}

// Unlimited reports whether the Gate has no limit now, without locking: a
// caller can skip Take and move as much as it likes.
func (g *Gate) Unlimited() bool { return g.unlimited.Load() }

// MaxCatchUp bounds the tokens a busy caller may hold beyond Burst.
//
// A caller that is waiting in Take, or that got a grant less than
// MaxCatchUp ago (it is busy moving those bytes), is not idle: timer and
// scheduler latency (tens of microseconds to milliseconds on a busy
// machine) delays its wake-ups, and with Burst at one chunk every late
// wake-up would lose the tokens that accrued past Burst, so the achieved
// rate would fall short, badly at high rates (8 KiB at 100 MB/s is 82 µs).
// For a busy caller the bucket therefore fills to Burst plus MaxCatchUp's
// worth of Rate, and the caller spends that surplus at once on its next
// Takes. An idle caller saves at most Burst.
const MaxCatchUp = 20 * time.Millisecond

// advance refills the bucket up to now: to at most Burst, or Burst plus
// MaxCatchUp's worth for a busy caller. Requires g.mu held.
func (g *Gate) advance(now time.Time) { g.b.advance(now, g.extra(now)) }

// extra is what the bucket may hold beyond Burst now, in nano-bytes:
// MaxCatchUp's worth of Rate for a busy caller, else nothing. Requires
// g.mu held.
func (g *Gate) extra(now time.Time) int64 {
	if g.waiting || now.Sub(g.lastGrant) <= MaxCatchUp {
		return catchUp(g.lim.Rate)
	}
	return 0
}

// Take blocks until it can grant min(n, Burst) bytes and returns that count
// (all n at once when the Gate is unlimited). It returns 0 and nil for
// n <= 0. It returns 0 and ctx.Err() if ctx ends first; nothing is taken
// then. A SetLimit while Take waits applies at once: the wait is recomputed
// at the new rate.
func (g *Gate) Take(ctx context.Context, n int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	g.takeMu.Lock()
	defer g.takeMu.Unlock()
	var waitStart time.Time
	g.mu.Lock()
	for {
		now := g.clock.Now()
		if !waitStart.IsZero() {
			g.waited += now.Sub(waitStart) // waitStart is set again before any further wait
		}
		got, d := g.grantNow(n, now)
		if got > 0 {
			g.waiting, g.waitStart = false, time.Time{}
			g.mu.Unlock()
			return got, nil
		}
		changed := g.changed
		g.waiting = true
		waitStart = now
		g.mu.Unlock()

		if g.timer == nil {
			g.timer, g.wake = g.clock.NewTimer(d)
		} else {
			g.timer.Reset(d)
		}
		select {
		case <-g.wake:
		case <-changed:
			g.timer.Stop()
		case <-ctx.Done():
			g.timer.Stop()
			g.mu.Lock()
			g.waited += g.clock.Now().Sub(waitStart)
			g.waiting, g.waitStart = false, time.Time{}
			g.mu.Unlock()
			return 0, ctx.Err()
		}
		g.mu.Lock()
	}
}

// TryTake grants min(n, Burst) bytes if the Gate has them now, as Take
// would, and returns that count and 0. Otherwise it grants nothing and
// returns 0 and how long until it could: the caller comes back then (a
// SetLimit meanwhile changes that; see [Gate.Changed]). From a wait until
// the grant that ends it, or [Gate.EndWait], the Gate counts as waiting,
// in Stats and for [MaxCatchUp], as with Take. It returns 0, 0 for
// n <= 0, and n, 0 when the Gate is unlimited.
//
// TryTake is for a caller that serves many Gates from one goroutine, with
// one timer. It must not be called while a Take on the same Gate waits.
func (g *Gate) TryTake(n int) (int, time.Duration) {
	if n <= 0 {
		return 0, 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	got, d := g.grantNow(n, now)
	if got > 0 {
		g.endWait(now)
		return got, 0
	}
	if !g.waiting {
		g.waiting, g.waitStart = true, now
	}
	return 0, d
}

// grantNow grants min(n, Burst) bytes (n when unlimited) if the bucket has
// them at now, n > 0, and returns that count; else it returns 0 and how
// long until it could. The caller keeps the waiting state. Requires g.mu
// held.
func (g *Gate) grantNow(n int, now time.Time) (int, time.Duration) {
	if g.lim.Rate == 0 {
		g.granted += int64(n)
		return n, 0
	}
	want := min(int64(n), g.lim.Burst)
	g.advance(now) // with the waiting state as it was: a waiting caller keeps its catch-up
	if g.b.has(want) {
		g.b.take(want)
		g.granted += want
		g.lastGrant = now
		return int(want), 0
	}
	return 0, g.b.readyIn(want)
}

// EndWait ends a wait TryTake began, without a grant: the caller stopped
// coming back.
func (g *Gate) EndWait() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.endWait(g.clock.Now())
}

// endWait counts a TryTake wait's time. Requires g.mu held.
func (g *Gate) endWait(now time.Time) {
	if g.waiting && !g.waitStart.IsZero() {
		g.waited += now.Sub(g.waitStart)
	}
	g.waiting, g.waitStart = false, time.Time{}
}

// Changed returns a channel that the next SetLimit closes.
func (g *Gate) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// Refund gives back n granted bytes that were not moved. Tokens never exceed
// Burst (plus MaxCatchUp's worth for a busy caller, as in Take), so a
// refund after a long pause may be partly lost. n <= 0 is a no-op.
func (g *Gate) Refund(n int) {
	if n <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.granted -= int64(n)
	if g.lim.Rate == 0 {
		return
	}
	now := g.clock.Now()
	g.advance(now)
	g.b.refund(int64(n), g.extra(now))
}

// SetLimit changes the Limit from now on, also for a Take already waiting.
// Tokens saved at the old rate are kept up to the new Burst, so a rate
// change never releases a burst larger than Burst. Turning a limit on (from
// unlimited) starts with a full bucket. It returns an error wrapping
// [ErrBadLimit], and changes nothing, if l is invalid.
func (g *Gate) SetLimit(l Limit) error {
	if err := l.Validate(); err != nil {
		return err
	}
	l = l.normalize()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.clock.Now())
	g.lim = l
	g.b.set(l.Rate, l.Burst)
	g.unlimited.Store(l.Rate == 0)
	close(g.changed)
	g.changed = make(chan struct{})
	return nil
}

// Limit returns the current Limit.
func (g *Gate) Limit() Limit {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lim
}

// GateStats are a Gate's counters since it was made.
type GateStats struct {
	// Bytes is the bytes granted, net of refunds.
	Bytes int64
	// Waited is the total time Take spent waiting for tokens.
	Waited time.Duration
	// Waiting reports whether a Take is waiting now.
	Waiting bool
	// Limit is the current Limit.
	Limit Limit
}

// Stats returns the Gate's counters.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return GateStats{Bytes: g.granted, Waited: g.waited, Waiting: g.waiting, Limit: g.lim}
}

// Interface guard: the real clock is a Clock.
var _ Clock = realClock{}
