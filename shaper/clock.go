package shaper

import "time"

// Clock is the time source of a [Gate]: tests inject a fake
// ([github.com/sluiceproxy/sluice/shaper/shapertest.Clock]) so that shaping
// is exact and instant; nil in Options means the real clock.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d, like time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
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
