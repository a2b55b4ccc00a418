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
// [Policy] is what one listener applies of them. A limit keyed by client
// address, network or listener counts per key in 64 shards, each with its
// own lock; a key and its /24 (/64) network hash to the same shard. A key
// is 24 bytes of state plus its map entry, about 45 bytes in all. A
// ByGlobal limit's one key is atomics (its count and its rate), so no
// lock is shared by every listener; only its queue and window, when it
// has them, take a lock of their own.
//
// A decision locks the shards of its keys in a fixed order, checks the
// keyed limits, then takes from the ByGlobal ones, and commits to all or
// gives back to all: a connection refused by one limit keeps nothing from
// the others. A shard that holds Table/64 keys tracks a new key under its
// /24 (/64) network, and refuses the connection ("table_full") when its
// networks are as many, so memory stays bounded under a flood of random
// addresses.
//
// Rates follow nginx's limit_req, on a nanosecond clock: a key's excess
// is how many connections it is above the rate, decaying at the rate; a
// connection adds one; above Burst it is refused (and changes nothing),
// above Delay it is admitted after (excess − Delay) / rate. A connection
// is worth Per/N nanoseconds, rounded to the nearest: exact for rates
// that divide a second or a minute into whole nanoseconds (5/s, 100/s,
// 3/m), off by under a nanosecond a connection otherwise. A limit that
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
// Several processes (the instances of a cluster) may share a limit: a
// Limit's Shared reports this Set's counts and brings back the others'
// (see [Shared]); and share bans: [Options.OnBan] hears of each ban
// started here, [Set.ImportBan] installs one made elsewhere. The package
// knows nothing of how they travel (sluice uses Redis, in
// shaper/cluster); a nil Shared costs a decision nothing.
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
