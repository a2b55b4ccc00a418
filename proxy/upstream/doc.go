// Package upstream chooses and dials the server a proxied connection goes
// to. It owns what lies between an admitted connection and its upstream
// socket: pools of servers, balancing, active and passive health, quotas
// and cooling, retries before the first byte, and the overflow target. It
// must not import proxy or config; time comes from a [shaper.Clock], so
// ejection, cooling and check schedules are tested on fixed instants.
//
// Today a pool is one "host:port" ([Static]); [Dialer] is the seam the
// proxy's accept path calls, so pools with many servers add behaviour
// behind it, not plumbing in front of it.
//
// Typical usage, one Dialer per listener:
//
//	d := upstream.NewStatic("10.0.0.1:80", upstream.Options{ConnectTimeout: 5 * time.Second})
//	conn, err := d.Dial(ctx) // bounded by ctx and the connect timeout
//	if err != nil {
//		... // refused, unreachable or timed out: reset the client
//	}
package upstream
