//go:build !linux

package shaper

import "time"

// fdTimer exists on Linux only (fdtimer_linux.go).
type fdTimer struct {
	c chan time.Time
}

func newFDTimer(time.Duration) (*fdTimer, bool) { return nil, false }
func (*fdTimer) Reset(time.Duration) bool       { return false }
func (*fdTimer) Stop() bool                     { return false }
