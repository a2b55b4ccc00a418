package shaper

import "time"

// bucket is the one token bucket of the package, under a [Gate], a
// [Link] and each of a link's keys: one token per byte, counted in
// nano-bytes so that refill and wait times carry no rounding at any rate,
// refilled lazily up to now. Rate is in bytes per second, 0 meaning
// unlimited (the bucket then grants anything); burst is its size in bytes.
// The zero value is an unlimited bucket. It is not safe for concurrent
// use: its owner's lock guards it.
type bucket struct {
	rate, burst int64
	nt          int64     // tokens, in nano-bytes
	last        time.Time // refilled up to here
}

// catchUp is how much a busy bucket at rate may hold beyond its burst, in
// nano-bytes: MaxCatchUp's worth of rate (at most MaxBurst), which late
// timers would otherwise lose. A Gate's busy caller, a Link with waiters
// and a key being served get it.
func catchUp(rate int64) int64 {
	return min(rate*int64(MaxCatchUp/time.Microsecond), MaxBurst*nano/1000) * 1000
}

// advance refills up to now, to at most burst plus extra nano-bytes
// (catchUp's, for a busy owner). Time going backwards changes nothing.
func (b *bucket) advance(now time.Time, extra int64) {
	el := now.Sub(b.last)
	if el <= 0 {
		return
	}
	b.last = now
	if b.rate == 0 {
		return
	}
	limit := b.burst*nano + extra
	if b.nt >= limit {
		return
	}
	room := limit - b.nt
	// Divide before multiplying, so a long pause cannot overflow.
	if int64(el) >= room/b.rate+1 {
		b.nt = limit
		return
	}
	b.nt = min(b.nt+int64(el)*b.rate, limit)
}

// has reports whether the bucket holds n bytes.
func (b *bucket) has(n int64) bool { return b.rate == 0 || b.nt >= n*nano }

// take removes n bytes, which it holds (has).
func (b *bucket) take(n int64) {
	if b.rate != 0 {
		b.nt -= n * nano
	}
}

// refund gives back n bytes, up to burst plus extra nano-bytes.
func (b *bucket) refund(n, extra int64) {
	if b.rate != 0 {
		b.nt = min(b.nt+n*nano, b.burst*nano+extra)
	}
}

// readyIn is how long until the bucket holds n bytes: the first
// nanosecond at which it does (a ceiling division).
func (b *bucket) readyIn(n int64) time.Duration {
	if b.rate == 0 || b.nt >= n*nano {
		return 0
	}
	return time.Duration((n*nano - b.nt + b.rate - 1) / b.rate)
}

// set changes rate and burst, keeping at most the new burst of what it
// holds. A bucket that becomes limited starts full.
func (b *bucket) set(rate, burst int64) {
	if b.rate == 0 && rate != 0 && !b.last.IsZero() {
		b.nt = burst * nano
	}
	b.rate, b.burst = rate, burst
	if rate != 0 {
		b.nt = min(b.nt, burst*nano)
	}
}
