// Package admit decides whether sluice admits a new connection, from the
// connection's metadata (its listener and client address) and the time,
// and returns a verdict: admit, or refuse with a reason. It owns
// admission policy: connection limits per key, new-connection rates,
// bans, allow and deny lists. It knows nothing of sockets: it may import
// net/netip, not net, and never proxy or config, so a stranger can use it
// alone and its tests run on fixed instants, not sleeps.
//
// What a refused connection gets (a close, a reset, an overflow target)
// is the caller's business; what a connection holds while it lives (a
// slot of a connection limit) comes back through its [Decision]'s Hold,
// released on every path by whoever owns the connection.
//
// Typical usage, on every accept:
//
//	d := policy.Admit(admit.Conn{Listener: "web", Client: clientAddrPort}, clock.Now())
//	if d.Verdict != admit.Admit {
//		refuse(conn, d.Reason)
//		return
//	}
//	defer d.Release() // when the connection ends, however it ends
package admit
