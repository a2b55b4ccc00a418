package shaper

import (
	"testing"
	"time"
)

// TestCoalesce: a real-clock wait ends no earlier than asked, less than half
// of it and less than MaxSlack later, on a power-of-two grid shared by every
// wait of that size; short waits are not moved.
func TestCoalesce(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 123_456_789, time.UTC)
	for _, d := range []time.Duration{0, 1, 3, time.Microsecond, 163 * time.Microsecond,
		time.Millisecond, 8 * time.Millisecond, 10 * time.Millisecond, time.Second} {
		step := time.Duration(1)
		for step*2 <= min(d/2, MaxSlack) {
			step *= 2
		}
		for off := range time.Duration(50) {
			now := base.Add(off * 7919 * time.Nanosecond)
			got := coalesce(now, d)
			late := got - d
			if late < 0 || (d > 0 && late > d/2) || late >= MaxSlack {
				t.Fatalf("coalesce(%v) = %v: %v late, want 0 ≤ late ≤ d/2 and < %v", d, got, late, MaxSlack)
			}
			if step > 1 && now.Add(got).UnixNano()%int64(step) != 0 {
				t.Fatalf("coalesce(%v) ends at %v, not on the %v grid", d, now.Add(got), step)
			}
		}
	}
	// Two waits due within the same step end together.
	now := base
	a, b := coalesce(now, 10*time.Millisecond), coalesce(now.Add(time.Millisecond), 9*time.Millisecond+500*time.Microsecond)
	if now.Add(a) != now.Add(time.Millisecond).Add(b) {
		t.Errorf("waits due 0.5 ms apart end at %v and %v, want together", now.Add(a), now.Add(time.Millisecond).Add(b))
	}
}
