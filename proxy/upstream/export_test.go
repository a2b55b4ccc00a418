package upstream

import "time"

// WithHooks returns o with test hooks: jitter replaces the check
// schedule's random jitter (it returns a duration in [0, d)); roundDone
// is called after each check round's results are applied and the next
// round's timer is armed.
func WithHooks(o Options, jitter func(d time.Duration) time.Duration, roundDone func()) Options {
	o.hooks = &testHooks{jitter: jitter, roundDone: roundDone}
	return o
}
