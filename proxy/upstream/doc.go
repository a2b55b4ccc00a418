// Package upstream chooses and dials the server a proxied connection goes
// to. It owns what lies between an admitted connection and its upstream
// socket: pools of servers, balancing, active and passive health, quotas
// and cooling, retries before the first byte, and the overflow target.
// It must not import proxy or config (it takes plain structs: a
// [PoolConfig] is the `upstreams:` block of one pool in base units), and
// imports shaper only for [shaper.Clock]: every timed decision
// (ejections, cooling, quota windows, check rounds, connect timeouts)
// runs on the clock given in [Options], so tests run on fixed instants.
//
// # Model
//
// A [Target] is where a listener sends its connections: a [Pool], or a
// [Static] "host:port" (a pool of one with no health or quotas). For each
// connection the proxy calls DialFor and gets a [Lease]: the connected
// socket, unwrapped (a *net.TCPConn, so splice still works), and a hold
// on its server. The lease counts as an active connection of the server
// ([LeastConn] balances on it) until the proxy ends it, exactly once:
// [Lease.Done] (it went well), [Lease.Failed] (it failed before any byte
// reached the client: a passive failure), [Lease.Busy] (the server
// answered 429/503: it cools), or [Lease.Retry] (end it as failed, dial
// another server). Ending twice is a no-op; a lease dropped without
// being ended is ended by the garbage collector and counted in
// Stats.Leaked, so a leak in the caller cannot pin a server's count.
//
// A server is in one [State]: [Up] (takes connections), [Down] (failed
// Fall active checks in a row; back after Rise passes), [Ejected]
// (Failures passive failures in a row; for Eject, doubling while it
// keeps failing right after each ejection, up to MaxEject; a success
// forgets), [Cooling] (its quota window is spent, or it asked to be left
// alone with a 429/503 Retry-After) or [Draining] (an operator's
// [Pool.Drain], or removed by a reload). Each change is reported once to
// Options.OnState, never per connection.
//
// Choosing a server (≤ 300 ns, no allocation, one lock): among the
// primaries that are up and not yet tried by this connection, by the
// pool's [Balance] (least_conn weighted with round-robin ties; nginx's
// smooth weighted round robin; weighted rendezvous hashing of the
// client's IP, where a leaving server moves only its own clients); if
// none, among the backups; then among servers this connection tried
// already. When no server is up but some are only ejected, one
// connection at a time probes the server whose ejection ends first
// (ejection is a guess, and must not turn a blip into minutes of
// overflow); down, cooling and draining servers are never probed. When
// nothing is left, DialFor returns an error wrapping [ErrNoServer]: the
// proxy sends the client to its listener's overflow target.
//
// Quotas are fixed windows per server: the window opens at the server's
// first connection after the last window ended and lasts Per; conn
// quotas are charged when a server is chosen (so concurrent dials never
// overshoot) and given back if the dial fails; bytes quotas are charged
// by the proxy through [Lease.AddBytes].
//
// Active checks: one goroutine per pool schedules rounds Interval apart
// (up to a tenth early, never late; the first at a random instant of the
// first Interval); a round checks every server at once, each check in a
// short-lived goroutine bounded by Timeout, and applies the results
// under the lock. So a server failing is seen Down within Fall intervals
// plus the timeout. Checks never run on the accept path; [Pool.Close]
// stops them.
//
// # Typical usage
//
// One Target per listener; the proxy's accept path, for each connection:
//
//	pool, err := upstream.NewPool(cfg, upstream.Options{ConnectTimeout: 5 * time.Second, Clock: clk, OnState: logChange})
//	...
//	lease, err := pool.DialFor(ctx, upstream.Request{Client: clientAddrPort})
//	switch {
//	case errors.Is(err, upstream.ErrNoServer):
//		... // overflow: upstream or respond_file, else reset
//	case err != nil:
//		... // refused, unreachable or timed out, retries spent: reset the client
//	}
//	var replay upstream.Replay // the client's first bytes, if the pool has http_retry_after
//	// Pump. Before the first byte of the answer goes to the client:
//	//   - the server reset or closed: lease, err = lease.Retry(ctx), replay.Bytes() to the new conn
//	//     (if replay.Complete()), or reset the client if err != nil;
//	//   - its head (upstream.ParseResponseHead) is a 429/503 and lease.Busy(head):
//	//     lease, err = lease.Retry(ctx), and replay as above.
//	// Then replay.Release(). While bytes move: lease.AddBytes(n) now and then.
//	lease.Done() // when the connection ends, however it ends after the first byte
//
// [Pool.Update] applies a reload, keeping the state of the servers that
// stay; [Pool.Stats] is the snapshot the admin API and metrics read;
// [Pool.Drain], [Pool.Enable] and [Pool.Cool] are the admin operations.
//
// A Pool is also a [Dialer] (the interface the proxy used for a single
// address): [Pool.Dial] ends its lease at once, so it cannot report
// early failures and least_conn does not see its connections. The proxy
// should move to [Target].DialFor.
package upstream
