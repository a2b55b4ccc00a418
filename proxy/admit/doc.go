// Package admit decides whether sluice admits a new connection, from the
// connection's metadata (its listener and client address) and the time,
// and returns a verdict: admit (maybe after a delay), queue, or refuse
// with a reason. It owns admission policy: connection limits per key,
// new-connection rates, fixed-window counts, borrowing, stepped bans,
// allow and deny lists. It knows nothing of sockets: it may import
// net/netip, not net, and never proxy or config, so a stranger can use it
// alone; time is always a parameter, so its tests run on fixed instants.
//
// # Model
//
// A [Set] holds the state of named [Limit]s and [Ban] policies; a
// [Policy] is what one listener applies of them. A limit counts per key
// (a client address, its network, the listener, or one key for all),
// in 64 shards, each with its own lock, so that decisions for different
// keys do not wait on each other. A decision locks the shards of its keys
// in a fixed order, checks every limit, and commits to all of them or to
// none: a connection refused by one limit takes nothing from the others.
//
// Rates follow nginx's limit_req exactly, in nanoseconds: a key's excess
// is how many connections it is above the rate, decaying at the rate; a
// connection adds one; above Burst it is refused (and changes nothing),
// above Delay it is admitted after (excess − Delay) / rate. A limit that
// would refuse on its rate alone goes on, with Borrow, while the limit it
// names admits the same connection at once (no delay, no queue).
//
// A ban policy remembers, per key, the times of its last events (refusals
// or connections, at most 255) and bans the key when more than a tier's
// Over fall within its Per; a repeat ban lasts RepeatFactor times longer,
// up to RepeatMax, plus up to 1% of jitter. A full table tracks new keys
// by their /24 (/64) network and never drops a ban. Idle keys of limits
// and bans are forgotten by [Set.Sweep].
//
// What a refused connection gets (a close, a reset, an overflow target)
// is the caller's business; what a connection holds while it lives (a
// slot of a connection limit) comes back through its [Decision]'s Hold,
// released once, on every path, by whoever owns the connection.
//
// Typical usage, on every accept:
//
//	set, err := admit.NewSet(admit.Rules{Limits: []admit.Limit{{Name: "per-ip", Conns: 10}}}, admit.Options{})
//	...
//	policy, err := set.Policy(admit.PolicyConfig{Listener: "web", Limits: []string{"per-ip"}})
//	...
//	d := policy.Admit(admit.Conn{Listener: "web", Client: clientAddrPort}, clock.Now())
//	if d.Verdict == admit.Refuse {
//		refuse(conn, d.Reason)
//		return
//	}
//	defer d.Release() // when the connection ends, however it ends
//	// d.Delay: hold the connection that long first; d.Waiter: wait for
//	// d.Waiter.Ready(), or d.Waiter.Cancel() on a timeout.
package admit
