// Package shapertest provides a fake [shaper.Clock] whose time moves only
// when a test says so.
//
// Typical usage:
//
//	clk := shapertest.NewClock()
//	g := shaper.NewGate(shaper.Limit{Rate: 1000, Burst: 100}, clk)
//	go taker(g)         // loops on g.Take
//	clk.BlockUntil(1)    // the taker is now waiting for tokens
//	clk.Advance(time.Second) // fires the timers that are due, in order
package shapertest

import (
	"slices"
	"sync"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// Clock is a fake clock starting at a fixed instant. It is safe for
// concurrent use. Timer functions run synchronously inside Advance, in
// order of their due time, with the clock set to that time.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*timer      // pending, unordered
	changed chan struct{} // made by a waiting BlockUntil, closed by the next change
}

// Epoch is the time a new Clock starts at.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// NewClock returns a Clock at Epoch.
func NewClock() *Clock {
	return &Clock{now: Epoch}
}

type timer struct {
	c   *Clock
	at  time.Time
	f   func()
	set bool
	ch  chan time.Time // of a NewTimer: drained by Reset and Stop
}

// drain empties a NewTimer's channel, as time.Timer does on Reset and Stop.
func (t *timer) drain() {
	if t.ch != nil {
		select {
		case <-t.ch:
		default:
		}
	}
}

// Now returns the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f at Now()+d.
func (c *Clock) AfterFunc(d time.Duration, f func()) shaper.Timer {
	t := &timer{c: c, f: f}
	t.Reset(d)
	return t
}

// NewTimer arms a timer that sends the fake time on the returned channel
// at Now()+d. Like a time.Timer's, the channel holds no stale value after a
// Reset or Stop.
func (c *Clock) NewTimer(d time.Duration) (shaper.Timer, <-chan time.Time) {
	ch := make(chan time.Time, 1)
	t := &timer{c: c, ch: ch}
	t.f = func() {
		select {
		case ch <- c.Now():
		default:
		}
	}
	t.Reset(d)
	return t, ch
}

func (t *timer) Reset(d time.Duration) bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	was := t.set
	t.drain()
	t.at = c.now.Add(d)
	if !t.set {
		t.set = true
		c.timers = append(c.timers, t)
	}
	c.notify()
	return was
}

func (t *timer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t.drain()
	if !t.set {
		return false
	}
	t.set = false
	c.timers = slices.DeleteFunc(c.timers, func(x *timer) bool { return x == t })
	c.notify()
	return true
}

// notify wakes a waiting BlockUntil. Requires c.mu held. (Nothing is
// allocated when nobody waits, so benchmarks on the clock measure what
// they drive.)
func (c *Clock) notify() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// Timers returns how many timers are armed.
func (c *Clock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// BlockUntil returns once exactly n timers are armed: with one Gate, once its
// Take is waiting for tokens.
func (c *Clock) BlockUntil(n int) {
	for {
		c.mu.Lock()
		if len(c.timers) == n {
			c.mu.Unlock()
			return
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		ch := c.changed
		c.mu.Unlock()
		<-ch
	}
}

// Advance moves the clock forward by d, running every timer that falls due
// on the way, in order, each at its own due time.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		var next *timer
		for _, t := range c.timers {
			if !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		c.now = next.at
		next.set = false
		c.timers = slices.DeleteFunc(c.timers, func(x *timer) bool { return x == next })
		c.notify()
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = end
	c.notify()
	c.mu.Unlock()
}

// Jump moves the clock forward by d at once, then runs every timer that
// fell due meanwhile, in order of due time, all at the new time: a timer
// that fires late, as on a busy machine. Timers armed by what they wake
// fall due after the new time and stay pending, so a test sees exactly one
// late wake-up, whatever the woken goroutines do meanwhile.
func (c *Clock) Jump(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*timer
	c.timers = slices.DeleteFunc(c.timers, func(t *timer) bool {
		if t.at.After(c.now) {
			return false
		}
		t.set = false
		due = append(due, t)
		return true
	})
	slices.SortFunc(due, func(a, b *timer) int { return a.at.Compare(b.at) })
	c.notify()
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// AdvanceWith is Advance for tests with waiters goroutines that re-arm a
// timer whenever they wait (each Take of a [shaper.Gate] does): after each
// timer fires it waits until waiters timers are armed again, so every woken
// goroutine has done all it can at that instant before time moves on.
func (c *Clock) AdvanceWith(d time.Duration, waiters int) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next time.Time
		for _, t := range c.timers {
			if !t.at.After(end) && (next.IsZero() || t.at.Before(next)) {
				next = t.at
			}
		}
		step := next.Sub(c.now)
		c.mu.Unlock()
		if next.IsZero() {
			break
		}
		c.Advance(step)
		c.BlockUntil(waiters)
	}
	c.mu.Lock()
	rest := end.Sub(c.now)
	c.mu.Unlock()
	c.Advance(rest)
}

// Interface guard.
var _ shaper.Clock = (*Clock)(nil)
