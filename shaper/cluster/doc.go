// Package cluster lets several sluice instances share link budgets,
// admission counters and bans through Redis, without ever putting Redis
// on the byte path. It is the only package that talks to Redis.
//
// Typical usage:
//
//	c, err := cluster.New(cluster.Options{Addr: "127.0.0.1:6379", Instance: "edge-1", Instances: 3})
//	if err != nil { ... }  // bad options only: a Redis that is down is not an error
//	defer c.Close()
//
//	link := shaper.NewLink(shaper.LinkLimit{Limit: shaper.Limit{Rate: line}}, clock)
//	lease, err := c.Link("hk-line", cluster.LinkOptions{
//		Line:   line, // bytes/s, the whole line's
//		Demand: func() cluster.Demand { return cluster.Demand{Conns: busyConns()} },
//		Apply: func(share int64) {
//			l := link.Limit()
//			l.Rate = share
//			_ = link.SetLimit(l)
//		},
//	})
//
//	perIP, _ := c.Counter("per-ip", cluster.CounterOptions{Window: time.Second})
//	perIP.Hit(ip, 1); perIP.AddConns(ip, +1) ... perIP.Get(ip)
//
//	bans, _ := c.Bans("scanners", cluster.BanOptions{OnBan: func(key string, until time.Time) { ... }})
//	bans.Add(ip, until)
//
// # Leases
//
// A link's line (bytes per second) is split among the live instances
// that share it. Each instance holds a *lease*: a rate, its share of the
// line, valid for one period ([Options.Period], 100 ms) and renewed every
// period, in one Redis call (one EVALSHA) that covers all the instance's
// links and counters: at most 10 calls a second per instance, whatever
// the traffic. The share is applied to the instance's local link
// ([LinkOptions.Apply]), whose scheduler spends it among its connections
// exactly as without a cluster. Tokens are not carried from one period to
// the next: what an instance does not use goes to the others at their
// next renewal, through the demand it reports.
//
// The split is computed atomically in Redis, by a Lua script, on Redis's
// clock (TIME), so the instances' clocks need not agree. Each instance
// reports its [Demand]: Conns, its connections that want bytes, and Want,
// a bound on what it could use. Every live instance keeps a floor
// ([Options.Floor], 1% of the line) so that a connection on an idle
// instance starts at once; the rest is water-filled, max-min fair,
// weighted by Conns and capped by Want; what no one can use is spread
// evenly. So three instances with 10, 5 and 1 busy connections get
// 10:5:1 of the line, as those 16 connections would on one machine. An
// instance that reports no busy connection keeps only the floor, and the
// others take its share at their first renewal after its report (after
// at most two periods and the hold below; measured 200 ms at 100 ms
// periods). An instance that stops renewing expires after
// [Options.Expiry] (three periods) and its share goes to the others
// (measured 300–400 ms).
//
// # The bound: shares never sum above the line
//
// Instances renew at different moments, so when shares move, one that
// grows must not do so before the ones that shrink have. The script
// grants each instance min(its fair share, line − what the others may be
// using now), where what another may be using is the share it was last
// told, or, for a hold of 1.5 × Timeout after its last renewal (while its
// reply may still be on its way), the larger of that and the share it
// reported having. A decrease thus applies at once and an increase only
// out of headroom, so at every instant the shares applied sum to at most
// the line. A renewal that reaches Redis after its caller gave up (a
// SIGSTOPped Redis resuming on a queue of old calls) carries a deadline on
// Redis's clock and is void. The one exception: a reply lost after the
// script ran (the caller timed out while the reply was on the wire). That
// instance keeps its old share, up to the decrease the lost reply
// carried, until its next renewal reports what it has (one period).
//
// When a link's state in Redis is new (first use, or a Redis restarted
// without persistence), the others may be spending shares Redis has not
// heard of: for one Expiry nobody grows beyond what it has, so a
// returning cluster does not burst while the instances re-register.
//
// # When Redis fails
//
// Redis never blocks a pump: renewals run in their own goroutine with
// [Options.Timeout] (50 ms) per call and no retries; Apply is called only
// from there, after a reply. A failed renewal changes nothing (the share
// stays); when renewals have failed for two periods, the instance enters
// [Fallback] (measured 150–255 ms after a SIGKILL, 252 ms after a
// SIGSTOP; at most 2 × Period + Timeout), logs one line, and holds its
// last leased share: the shares of a cluster that lost Redis keep summing
// to at most the line, for as long as the outage lasts, with no growth.
// A link that never had a lease runs at its static fallback share
// ([LinkOptions.Fallback], Line ÷ [Options.Instances] by default) from the
// first failed call: an instance starts while Redis is down. When Redis
// answers again the instance logs one line and returns to [Leased]
// (measured 25 ms after SIGCONT; 190–300 ms after a restart of an empty
// Redis, as its first renewals find a new state and hold their shares).
// With Sentinel ([Options.Sentinel]) the client follows the master; a
// failover is an outage of a few seconds (measured: leased again 2.5 s
// after the master was killed, with the sentinels' down-after at 400 ms).
//
// A partition that cuts one instance off while the others still reach
// Redis is the case a lease cannot cover: after Expiry, the others take
// the cut instance's share while it holds it in fallback, so the line may
// carry up to 1 + (its share ÷ line) of its rate until it returns. Keep
// Redis next to the instances.
//
// # Counters
//
// A [Counter] shares, per key, new connections in fixed windows (aligned
// on Redis's clock) and open connections, for admission limits whose
// counters are shared. Updates are local and flushed once per period in
// the renewal call, which returns the cluster's counts. A reading
// therefore misses at most what the other instances recorded since their
// last renewal: with N instances each admitting at most r connections of
// a key per second, a limit may be exceeded by at most
// (N − 1) × r × (Period + Timeout) connections, and a connection count
// by what the others opened within one period. A crashed instance's open
// connections stop counting after Expiry.
//
// # Bans
//
// [Bans] share a ban policy: a ban lives in a sorted set (key → end, on
// Redis's clock: the time left travels, so the instances' clocks need not
// agree) and is announced on a pub/sub channel. An instance whose
// subscription (re)starts reads the set again, so a ban is never missed
// across a disconnect. Bans made while Redis is unreachable wait (up to
// [MaxPendingBans]) and go out when it returns. Measured: p99 0.8–3.2 ms (runs
// differ) from Add on one instance to OnBan on two others, over 100 bans,
// on loopback.
//
// # Redis
//
// A plain redis-server or one watched by Sentinel; Redis 6.2 or later (the
// scripts use ZADD GT). Nothing needs persisting: a restarted, empty
// Redis is re-filled within a period or two. Every key is under the hash
// tag {Prefix}, so one script call may touch all of them, and they live
// in one slot of a Redis Cluster. The load on Redis is one script per
// instance per period, whose cost grows with links × instances and
// counter keys × instances.
package cluster
