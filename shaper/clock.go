package shaper

import "time"

// Clock is the time source of a [Gate] and a [Link]: tests inject a fake
// ([github.com/sluiceproxy/sluice/shaper/shapertest.Clock]) so that shaping
// is exact and instant; nil in Options means the real clock.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d, like time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
	// NewTimer sends the time on the returned channel after d, like
	// time.NewTimer: no value sent before a Reset or Stop is received
	// after it. A waiter woken by the channel is readied directly, with no
	// goroutine started for it. A Gate waits on it. The real clock's
	// timers end late on purpose, by up to a quarter of d (see [MaxSlack]);
	// a fake clock's end exactly.
	NewTimer(d time.Duration) (Timer, <-chan time.Time)
}

// Timer is a pending AfterFunc call or timer send.
type Timer interface {
	// Stop prevents the call if it has not happened; it reports whether it
	// did so.
	Stop() bool
	// Reset re-arms the timer to call its function after d.
	Reset(d time.Duration) bool
}

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
func (realClock) NewTimer(d time.Duration) (Timer, <-chan time.Time) {
	t := time.NewTimer(coalesce(time.Now(), d))
	return slackTimer{t}, t.C
}

// slackTimer is a time.Timer whose Reset coalesces.
type slackTimer struct{ *time.Timer }

func (t slackTimer) Reset(d time.Duration) bool { return t.Timer.Reset(coalesce(time.Now(), d)) }

// MaxSlack bounds how late the real clock's NewTimer may end on purpose.
const MaxSlack = 8 * time.Millisecond

// coalesce returns how long to wait from now for something due after d:
// d, plus less than half of it (at most [MaxSlack]), so that the wait ends
// on the time grid ([OnGrid]) with a step of at most half of d and at most
// MaxSlack. Waits of many Gates then end together, and a process shaping
// many connections wakes once for a batch of them rather than once per
// connection: wake-ups, not bytes, are most of the CPU a shaped connection
// costs. Ending late loses nothing: the tokens that accrue meanwhile stay
// in the bucket (see [MaxCatchUp]), so rates are kept exactly; only the
// instant of a grant moves, by less than half the gap between grants.
func coalesce(now time.Time, d time.Duration) time.Duration {
	step := GridStep(min(d/2, MaxSlack))
	if step == 1 {
		return d
	}
	return OnGrid(now.Add(d), step).Sub(now)
}

// The time grid: waits in shaper end on multiples of a power-of-two step
// of time, counted in nanoseconds since the Unix epoch, so that waits due
// close together, of any Gate or [Loop], end together and wake the process
// once. The step sets how late a wait may end: a Gate's waits use up to
// [MaxSlack], a Loop's up to [MaxLoopStep].

// GridStep returns the largest power of two of nanoseconds that is at most
// limit, and 1 ns for a limit below 2 ns.
func GridStep(limit time.Duration) time.Duration {
	step := time.Duration(1)
	for step*2 <= limit {
		step *= 2
	}
	return step
}

// OnGrid returns the first multiple of step (a power of two, see
// [GridStep]) at or after t.
func OnGrid(t time.Time, step time.Duration) time.Time {
	if rem := t.UnixNano() & int64(step-1); rem != 0 {
		t = t.Add(step - time.Duration(rem))
	}
	return t
}

// exactTimer is c.NewTimer without the real clock's coalescing, for a
// caller whose times are on a grid of its own (a [Loop]). On the real clock
// it is a timerfd where the system has one ([fdTimer]), else a time.Timer.
func exactTimer(c Clock, d time.Duration) (Timer, <-chan time.Time) {
	if _, ok := c.(realClock); ok {
		if t, ok := newFDTimer(d); ok {
			return t, t.c
		}
		t := time.NewTimer(d)
		return t, t.C
	}
	return c.NewTimer(d)
}

// RealClock returns the wall clock: what a nil Clock in an Options means.
func RealClock() Clock { return realClock{} }
